"""The run configs shipped with phd_jax (`get_config(name=None)` in each file).

    default.py     a small byte-level PHD-CSWA-2-16-32 on Shakespeare (the quick start)
    tiny.py        compiles in seconds (tests, smoke runs)
    small.py       a larger CPU / single-accelerator run
    repro.py       the experiments' settings (experiments/)
    paper_550m.py, paper_1b.py   the paper's models

The command lines take `--config=configs/NAME.py[:MODEL_NAME]`: a path that exists (relative
to the working directory, or absolute) is that file; otherwise `configs/NAME.py` is this
package's file, so the same spelling works in a checkout, from a wheel, or anywhere else.
Copy one of these files to start a config of your own.
"""

from __future__ import annotations

import os

DIRECTORY = os.path.dirname(os.path.abspath(__file__))
DEFAULT = "configs/default.py"


def names() -> list[str]:
    """The shipped configs: ['default', 'paper_1b', ...]."""
    return sorted(f[:-3] for f in os.listdir(DIRECTORY) if f.endswith(".py") and not f.startswith("_"))


def resolve(spec: str) -> str:
    """`FILE[:ARG]` with FILE an existing path as given; else `configs/NAME.py` (or `NAME.py`)
    naming a shipped config as that file's absolute path; else `spec` unchanged (the caller
    reports the missing file)."""
    file, sep, arg = spec.partition(":")
    if os.path.isabs(file) or os.path.exists(file):
        return spec
    head, name = os.path.split(os.path.normpath(file))
    shipped = os.path.join(DIRECTORY, name)
    if head in ("", "configs") and name.endswith(".py") and os.path.isfile(shipped) and not name.startswith("_"):
        return shipped + sep + arg
    return spec


def resolve_argv(argv: list[str], flag: str = "config") -> list[str]:
    """`argv` with the value of `--FLAG=FILE[:ARG]` (or `--FLAG FILE[:ARG]`) passed through `resolve`."""
    out, argv = [], list(argv)
    for i, arg in enumerate(argv):
        for prefix in (f"--{flag}=", f"-{flag}="):
            if arg.startswith(prefix):
                arg = prefix + resolve(arg[len(prefix) :])
        if i > 0 and argv[i - 1] in (f"--{flag}", f"-{flag}") and not arg.startswith("-"):
            arg = resolve(arg)
        out.append(arg)
    return out
