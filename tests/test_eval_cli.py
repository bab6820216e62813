"""eval.py on a checkpoint written by a tiny training run: its numbers against direct
recomputation, the JSON it writes, and clear errors that change nothing on disk."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import file_snapshot

import phd_jax
from phd_jax.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_run_config(**changes):
    sys.path.insert(0, ROOT)
    from phd_jax.configs.tiny import get_config

    c = get_config()
    c.num_steps, c.checkpoint_every, c.log_every, c.eval_every = 4, 4, 4, 4
    c.compilation_cache = ""
    for k, v in changes.items():
        section = c
        *path, last = k.split(".")
        for p in path:
            section = section[p]
        section[last] = v
    return c


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    from phd_jax.train import train_and_evaluate

    workdir = str(tmp_path_factory.mktemp("evalrun") / "run")
    train_and_evaluate(tiny_run_config(), workdir, progress=False)
    return workdir


@pytest.fixture(scope="session")
def cli_result(run_dir):
    """One real `python eval.py` run asking for every kind of evaluation."""
    cmd = [
        sys.executable,
        os.path.join(ROOT, "eval.py"),
        f"--workdir={run_dir}",
        "--loss",
        "--tasks=shakespeare_mc",
        "--limit=4",
        "--generate=ROMEO.",
        "--generate=JULIET.",
        "--max_new_tokens=8",
        "--report",
        "--report_lengths=8",
        "--config.model.attention=dense",
    ]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_backend_optimization_level=0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(run_dir, "eval", "4.json")) as f:
        return proc.stdout, json.load(f)


def test_eval_loss_equals_direct_forward(run_dir, cli_result):
    from phd_jax.data import make_pipeline
    from phd_jax.train import load_run_config, restore_params

    _, saved = cli_result
    cfg, params, step = restore_params(run_dir)
    nll = []
    for batch in make_pipeline(load_run_config(run_dir)).eval_batches():
        tokens = np.asarray(batch["tokens"])
        logits = phd_jax.forward(params, cfg, tokens[:, :-1])
        logp = np.asarray(jax.nn.log_softmax(logits, -1), np.float64)
        nll.append(-np.take_along_axis(logp, tokens[:, 1:, None], -1).ravel())
    nll = np.concatenate(nll)
    assert step == saved["step"] == 4
    assert saved["loss"]["loss"] == pytest.approx(nll.mean(), abs=1e-5)
    assert saved["loss"]["tokens"] == nll.size
    assert saved["loss"]["bits_per_byte"] == pytest.approx(nll.mean() / np.log(2), abs=1e-5)  # bytes


def test_eval_json_holds_every_requested_metric(cli_result):
    out, saved = cli_result
    assert saved["model"] == "PHD-2" and saved["inference_changes"] == {"attention": ["auto", "dense"]}
    assert {"loss", "perplexity", "bits_per_byte", "tokens"} <= set(saved["loss"])
    assert {"acc", "acc_norm"} <= set(saved["tasks"]["shakespeare_mc"])
    assert [s["prompt"] for s in saved["generate"]["samples"]] == ["ROMEO.", "JULIET."]
    (row,) = saved["report"]
    assert row["kv_cache_bytes"] == row["vanilla_kv_cache_bytes"] > 0 and row["decode_s_per_token"] > 0
    assert "inference-only change: model.attention 'auto' -> 'dense'" in out
    assert "shakespeare_mc: acc" in out and "loss: perplexity" in out and "written:" in out


def test_bad_requests_are_clear_errors_and_change_nothing(run_dir, cli_result, tmp_path):
    from phd_jax.evaluation.run import evaluate_checkpoint, resolve_run

    before = file_snapshot(run_dir)
    with pytest.raises(
        ConfigError,
        match=r"config.model.repeat=3 is invalid: contradicts the checkpoint, "
        r"which is PHD-2 with repeat=2",
    ):
        evaluate_checkpoint(run_dir, overrides={"model.repeat": 3}, loss=True)
    with pytest.raises(ConfigError, match="config.learning_rate=.*does not affect evaluation"):
        evaluate_checkpoint(run_dir, overrides={"learning_rate": 0.1}, loss=True)
    with pytest.raises(ValueError, match="tasks='shakespeare_mcx' is invalid.*did you mean shakespeare_mc"):
        evaluate_checkpoint(run_dir, tasks="shakespeare_mcx")
    with pytest.raises(ValueError, match=r"prompt\[0\].*needs 70 positions.*max_seq_len=64"):
        evaluate_checkpoint(run_dir, prompts=["x" * 62], max_new_tokens=8)
    with pytest.raises(ConfigError, match=r"step=999 is invalid: checkpoints .* are at steps \[4\]"):
        evaluate_checkpoint(run_dir, step=999, loss=True)
    with pytest.raises(FileNotFoundError, match="checkpoint=.*does not exist"):
        evaluate_checkpoint(checkpoint=os.path.join(run_dir, "checkpoints", "8"), loss=True)
    with pytest.raises(ValueError, match="nothing requested"):
        evaluate_checkpoint(run_dir)
    assert file_snapshot(run_dir) == before
    # A checkpoint of another model: the weights do not fit the config saved beside them.
    other = str(tmp_path / "other")
    shutil.copytree(run_dir, other)
    mc = json.load(open(os.path.join(other, "model_config.json")))
    json.dump({**mc, "d_model": 64}, open(os.path.join(other, "model_config.json"), "w"))
    before = file_snapshot(other)
    with pytest.raises(ConfigError, match="does not match model"):
        evaluate_checkpoint(checkpoint=os.path.join(other, "checkpoints", "4"), loss=True)
    assert file_snapshot(other) == before
    # An inference-only change is allowed, and said.
    run = resolve_run(
        run_dir, overrides={"model.attention": "dense", "model.repeat": 2, "data.source": "text:/nowhere/*.txt"}
    )
    assert run.changes == {"attention": ("auto", "dense")} and run.model_config.attention == "dense"
    assert run.config.data.source == "text:/nowhere/*.txt"


def test_cli_error_exits_2_with_one_line(run_dir, cli_result):
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "eval.py"), f"--workdir={run_dir}", "--loss", "--config.model.d_model=64"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        timeout=300,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "config.model.d_model=64 is invalid: contradicts the checkpoint" in proc.stderr
