"""K chosen at inference (`eval.py --repeat=K'`): a PHD-K checkpoint evaluated with K' copies per
token gives exactly the loss of `forward` with K' and the same parameters; the note is printed;
the K' results sit next to the trained K's in eval/<step>.json; what cannot work is refused."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import copy_v010_workdir, file_snapshot

import phd_jax
from phd_jax.config import ModelConfig
from phd_jax.errors import ConfigError
from phd_jax.evaluation.repeat import repeat_note, with_repeat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_backend_optimization_level=0"}


@pytest.fixture
def workdir(tmp_path):
    return copy_v010_workdir(tmp_path)


def _reference_loss(workdir, **changes):
    """Mean next-token cross-entropy of `forward` with the restored parameters and `changes`."""
    from phd_jax.data import make_pipeline
    from phd_jax.train import load_run_config, restore_params

    cfg, params, _ = restore_params(workdir)
    cfg = dataclasses.replace(cfg, **changes)
    nll = []
    for batch in make_pipeline(load_run_config(workdir)).eval_batches():
        tokens = np.asarray(batch["tokens"])
        logp = np.asarray(jax.nn.log_softmax(phd_jax.forward(params, cfg, tokens[:, :-1]), -1), np.float64)
        nll.append(-np.take_along_axis(logp, tokens[:, 1:, None], -1).ravel())
    return np.concatenate(nll).mean()


def test_repeat_loss_is_forward_with_k_prime(workdir):
    from phd_jax.evaluation.run import evaluate_checkpoint

    notes = []
    res = evaluate_checkpoint(workdir, repeat=3, loss=True, write=False, log=notes.append)
    assert res["model"] == "PHD-3" and res["repeat"] == 3 and res["trained_repeat"] == 2
    assert res["loss"]["loss"] == pytest.approx(_reference_loss(workdir, repeat=3), rel=1e-6)
    assert res["loss"]["loss"] != pytest.approx(_reference_loss(workdir), rel=1e-6)  # K' did change the run
    assert notes == ["model PHD-2 trained with K=2, evaluated with K'=3 (PHD-3): no parameters change"]
    # K' = 1: no hidden tokens, the vanilla computation with the same parameters.
    res = evaluate_checkpoint(workdir, repeat=1, loss=True, write=False, log=notes.append)
    assert res["loss"]["loss"] == pytest.approx(_reference_loss(workdir, variant="vanilla", repeat=1), rel=1e-6)
    assert "evaluated with K'=1 (PHD-1, the vanilla computation: no hidden tokens)" in notes[-1]


def test_cli_prints_the_note_and_keeps_every_k(workdir):
    def run(*args):
        proc = subprocess.run(
            [sys.executable, os.path.join(ROOT, "eval.py"), f"--workdir={workdir}", "--loss", *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=ENV,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        with open(os.path.join(workdir, "eval", "4.json")) as f:
            return proc.stdout, json.load(f)

    from phd_jax.evaluation.run import evaluate_checkpoint

    evaluate_checkpoint(workdir, loss=True, log=lambda _: None)  # the trained K first
    out, saved = run("--repeat=3")
    assert "model PHD-2 trained with K=2, evaluated with K'=3 (PHD-3): no parameters change" in out
    assert "loss@K=3: loss (nats/token)" in out and "PHD-3 (step 4; trained with K=2)" in out
    assert saved["model"] == "PHD-2" and saved["repeat"] == saved["trained_repeat"] == 2
    k3 = saved["repeats"]["3"]
    assert k3["model"] == "PHD-3" and k3["repeat"] == 3
    assert k3["loss"]["loss"] == pytest.approx(_reference_loss(workdir, repeat=3), rel=1e-6)
    assert saved["loss"]["loss"] == pytest.approx(_reference_loss(workdir), rel=1e-6)  # not overwritten
    # A second K' goes next to the first; --repeat=K (the trained one) is the plain evaluation.
    res = evaluate_checkpoint(workdir, repeat=4, loss=True, log=lambda _: None)
    res2 = evaluate_checkpoint(workdir, repeat=2, loss=True, log=lambda _: None)
    with open(res["file"]) as f:
        saved = json.load(f)
    assert set(saved["repeats"]) == {"3", "4"} and saved["repeats"]["4"]["model"] == "PHD-4"
    assert saved["loss"] == res2["loss"] and saved["repeats"]["3"] == k3


def _with_model(workdir, **changes):
    path = os.path.join(workdir, "model_config.json")
    with open(path) as f:
        mc = json.load(f)
    with open(path, "w") as f:
        json.dump({**mc, **changes}, f)


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            dict(variant="vanilla", repeat=1),
            r"repeat=3 is invalid: --repeat needs a PHD checkpoint trained with "
            r"hidden tokens \(K >= 2\); this one is vanilla, trained with K=1",
        ),
        (dict(variant="phd", repeat=1), r"this one is PHD-1, trained with K=1"),
        (
            dict(variant="naive", repeat=2),
            r"repeat=3 is invalid: --repeat needs a PHD checkpoint; this one is "
            r"naive-2, naive repetition, whose KV cache .* and rotary positions depend on K",
        ),
        (
            dict(position_mode="flat"),
            r"repeat=3 is invalid: --repeat needs position_mode='shared'; this checkpoint "
            r"\(PHD-2\) has position_mode='flat': copy s of position n has rotary position n\*K \+ s",
        ),
    ],
)
def test_refused_by_name_and_nothing_written(workdir, changes, message):
    from phd_jax.evaluation.run import evaluate_checkpoint

    _with_model(workdir, **changes)
    before = file_snapshot(workdir)
    with pytest.raises(ConfigError, match=message):
        evaluate_checkpoint(workdir, repeat=3, loss=True)
    assert file_snapshot(workdir) == before
    assert not os.path.exists(os.path.join(workdir, "eval"))


def test_cli_refusal_is_one_line(workdir):
    _with_model(workdir, variant="vanilla", repeat=1)
    before = file_snapshot(workdir)
    for flag in ("--repeat=3", "--config.model.repeat=3"):
        proc = subprocess.run(
            [sys.executable, os.path.join(ROOT, "eval.py"), f"--workdir={workdir}", "--loss", flag],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=ENV,
            timeout=300,
        )
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert len(proc.stderr.strip().splitlines()) == 1 and "--repeat" in proc.stderr
    assert file_snapshot(workdir) == before


def test_config_override_of_repeat_points_to_the_flag(workdir):
    from phd_jax.evaluation.run import resolve_run

    with pytest.raises(ConfigError, match=r"config.model.repeat=3 is invalid: .* use --repeat=3"):
        resolve_run(workdir, overrides={"model.repeat": 3})
    with pytest.raises(ConfigError, match=r"repeat=0 is invalid"):
        resolve_run(workdir, repeat=0)
    assert resolve_run(workdir, repeat=2).model_config == resolve_run(workdir).model_config


def test_window_and_chunk_keep_their_values():
    cswa = ModelConfig(variant="phd_cswa", repeat=2, window=4, chunk=8, num_layers=2, max_seq_len=64)
    three = with_repeat(cswa, 3)
    assert (three.repeat, three.window, three.chunk, three.name) == (3, 4, 8, "PHD-CSWA-3-4-8")
    one = with_repeat(cswa, 1)
    assert not one.is_phd and one.effective_window == 0 and one.window == 4
    assert with_repeat(cswa, None) is cswa and with_repeat(cswa, 2) is cswa
    assert repeat_note(cswa, three) == (
        "model PHD-CSWA-2-4-8 trained with K=2, evaluated with K'=3 (PHD-CSWA-3-4-8): no parameters change"
    )


def test_lm_adapter_takes_repeat():
    pytest.importorskip("lm_eval")
    from phd_jax.data import make_tokenizer
    from phd_jax.evaluation.lm import PHDLM

    cfg = ModelConfig(variant="phd", repeat=2, num_layers=1, d_model=32, num_heads=2, num_kv_heads=2, head_dim=16)
    tok = make_tokenizer("byte")
    assert PHDLM(None, cfg, tok).cfg is cfg
    assert PHDLM(None, cfg, tok, repeat=4).cfg == cfg.replace(repeat=4)
    with pytest.raises(ConfigError, match="--repeat needs a PHD checkpoint"):
        PHDLM(None, cfg.replace(variant="naive"), tok, repeat=3)
