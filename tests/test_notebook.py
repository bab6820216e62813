"""The quick-start notebook runs top to bottom (with 3 training steps) and says what it should."""

import os
import re

import nbformat
import pytest
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "notebooks", "quickstart.ipynb")


def _parameter_cell(nb):
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "exactly one cell tagged 'parameters'"
    assert re.fullmatch(r"num_steps = \d+\s*(#.*)?", cells[0].source.strip()), cells[0].source
    return cells[0]


def _text(cell):
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def _cell(nb, snippet):
    """The first code cell containing `snippet`."""
    return next(c for c in nb.cells if c.cell_type == "code" and snippet in c.source)


def test_committed_notebook_has_a_full_run_and_the_colab_links():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    steps = int(re.search(r"\d+", _parameter_cell(nb).source).group())
    assert steps >= 100
    assert f"after {steps} steps" in _text(_cell(nb, "phd_jax.generate("))  # executed with that setting
    assert any("image/png" in o.get("data", {}) for o in _cell(nb, "plot_metrics(").outputs)
    # No public repository yet: Colab instructions without a made-up URL; in Colab the install
    # cell takes the user's own git URL (or an uploaded wheel) from REPO_URL.
    assert "colab.research.google.com/github/<you>/<repo>/blob/main/notebooks/quickstart.ipynb" in nb.cells[0].source
    install = nb.cells[1].source
    assert 'REPO_URL = ""' in install and "git+{REPO_URL}" in install and 'if "google.colab" in sys.modules:' in install
    assert "github.com/phd-jax" not in install


def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    _parameter_cell(nb).source = "num_steps = 3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
    # The kernel imports phd_jax from this checkout (what scripts/venv.sh's editable install does);
    # it runs in tmp_path, so its runs/ go there.
    monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()

    assert _text(nb.cells[1]) == ""  # not Colab: installs nothing
    masks = _cell(nb, "plot_masks(")
    assert any("image/png" in o.get("data", {}) for o in masks.outputs)
    assert os.path.getsize(tmp_path / "runs" / "quickstart" / "loss.png") > 10_000
    for name in ("vanilla", "PHD-CSWA-3-16-32"):
        assert (tmp_path / "runs" / "quickstart" / name / "metrics.jsonl").exists()
        assert f"--- {name} after 3 steps ---\nROMEO.\n" in _text(_cell(nb, "phd_jax.generate("))
    # KV cache, MiB per sequence (16 layers x 8 KV heads x 64 x 4096 positions x K/V x 2 bytes = 128 MiB):
    # naive is K times vanilla, PHD equals vanilla, PHD-CSWA adds a window of W = 16 hidden tokens.
    table = _text(_cell(nb, "kv_cache_bytes("))
    rows = {int(r.split("|")[0]): [float(x) for x in r.split("|")[1:]] for r in table.splitlines()[1:] if r.strip()}
    vanilla = 16 * 8 * 64 * 4096 * 2 * 2 / 2**20
    window = 16 * 8 * 64 * 16 * 2 * 2 / 2**20
    for k in (2, 4, 8, 16):
        assert rows[k] == pytest.approx([vanilla, k * vanilla, vanilla, vanilla + window], abs=0.005)
