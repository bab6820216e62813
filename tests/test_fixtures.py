"""Workdirs and Hugging Face exports written by phd-jax 0.1.0 still load, evaluate and resume.

`tests/fixtures/v0_1_0/` was written by the 0.1.0 release (commit ae4d404) with
`train.py --config=configs/tiny.py` (4 steps, checkpoints at 2 and 4), `save_hf_llama`, and
`make_expected.py` beside it, which recorded the logits, the greedy tokens and the loss of a
resume to step 6 that 0.1.0 produced. Later versions must reproduce them from those files.
"""

import ast
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import phd_jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "v0_1_0")
TOL = 2e-5  # the fixture was computed with train.py's XLA flags, the tests run with conftest's
# The command line that wrote the fixture, minus the step count (tiny_workdir: 4, the resume: 6).
ARGS = (
    "--config=configs/tiny.py",
    "--config.checkpoint_every=2",
    "--config.keep_checkpoints=2",
    "--config.log_every=2",
    "--config.eval_every=4",
    "--config.sample_tokens=4",
)


@pytest.fixture(scope="module")
def expected():
    with open(os.path.join(FIXTURE, "expected.json")) as f:
        return dict(np.load(os.path.join(FIXTURE, "expected.npz"))), json.load(f)


def _copy_workdir(tmp_path):
    wd = tmp_path / "tiny_workdir"
    shutil.copytree(os.path.join(FIXTURE, "tiny_workdir"), wd)
    return str(wd)


def test_old_workdir_restores_the_same_model(expected, tmp_path):
    from phd_jax.train import restore_params

    arrays, meta = expected
    cfg, params, step = restore_params(_copy_workdir(tmp_path))
    assert step == meta["step"] == 4
    logits = np.asarray(phd_jax.forward(params, cfg, arrays["tokens"]))
    np.testing.assert_allclose(logits, arrays["logits"], atol=TOL, rtol=TOL)
    generated = np.asarray(phd_jax.generate(params, cfg, arrays["tokens"][:, :8], 6, max_len=32))
    np.testing.assert_array_equal(generated, arrays["generated"])


def test_old_hf_export_loads_the_same_model(expected):
    arrays, _ = expected
    cfg, params = phd_jax.load_hf_llama(os.path.join(FIXTURE, "hf_export"))
    assert cfg.name == "PHD-2"
    logits = np.asarray(phd_jax.forward(params, cfg, arrays["tokens"]))
    np.testing.assert_allclose(logits, arrays["logits"], atol=TOL, rtol=TOL)


def test_old_workdir_resumes_to_the_same_loss(expected, tmp_path):
    _, meta = expected
    wd = _copy_workdir(tmp_path)
    out = subprocess.run(
        [sys.executable, "train.py", f"--workdir={wd}", *ARGS, "--config.num_steps=6"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resum" in (out.stdout + out.stderr).lower(), out.stdout
    with open(os.path.join(wd, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    got = {r["step"]: r for r in rows if "loss" in r}
    for want in meta["resumed_to_6"]:
        np.testing.assert_allclose(got[want["step"]]["loss"], want["loss"], rtol=TOL)
        np.testing.assert_allclose(got[want["step"]]["grad_norm"], want["grad_norm"], rtol=1e-4)
    # 0.1.0's checkpoint holds an unused `rng`; the new one holds TrainState's fields only, and reads back.
    assert _state_keys(wd, 4) == {"step", "rng", "nonfinite", "params", "opt_state"}
    assert _state_keys(wd, 6) == {"step", "nonfinite", "params", "opt_state"}
    from phd_jax.train import restore_params

    assert restore_params(wd)[2] == 6


def _state_keys(workdir, step):
    with open(os.path.join(workdir, "checkpoints", str(step), "state", "_METADATA")) as f:
        tree = json.load(f)["tree_metadata"]
    return {ast.literal_eval(path)[0] for path in tree}  # keys are tuple reprs: "('params', 'embed', ...)"


def test_old_workdir_evaluates(tmp_path):
    from phd_jax.evaluation.run import evaluate_checkpoint

    wd = _copy_workdir(tmp_path)
    result = evaluate_checkpoint(wd, loss=True)
    assert result["step"] == 4 and np.isfinite(result["loss"]["loss"]), result
    assert os.path.exists(os.path.join(wd, "eval", "4.json"))
