"""The README's ten-line example runs and says what the README claims."""

import contextlib
import io
import os
import re

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def test_readme_example_runs():
    text = open(README).read()
    section = text[text.index("## The library in ten lines") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len([line for line in code.splitlines() if line.strip()]) <= 12
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("PHD-CSWA-3-16-32 (2, 64, 256) (2, 16) ")
    kv_bytes, state_bytes = map(int, lines[0].split()[-2:])
    assert kv_bytes == state_bytes == 4 * 2 * 4 * (2 * 128 + 2 * 16) * 2 * 32  # layers*batch*... spec formula
    assert float(lines[1].split()[-1]) <= 1e-4
