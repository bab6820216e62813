"""`train.py` as a subprocess on the tiny config: it learns and writes checkpoints, TensorBoard
events and metrics.jsonl; runs killed (SIGKILL after a checkpoint, SIGKILL inside an async
save) or preempted (SIGTERM) resume bit-for-bit; two processes with jax.distributed agree
with one and both exit."""

import glob
import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
from train_runs import ARGS, ROOT, STEPS, final_params, metrics, train


def test_train_py_learns_and_writes_its_workdir(reference):
    wd, stdout = reference
    rows = metrics(wd)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    first, last = np.mean([r["loss"] for r in rows[:3]]), np.mean([r["loss"] for r in rows[-3:]])
    assert last < first - 1.0, (first, last)
    assert rows[-1]["val_loss"] < rows[9]["val_loss"]
    for key in (
        "perplexity",
        "grad_norm",
        "learning_rate",
        "step_time",
        "tokens",
        "flops",
        "tokens_per_s",
        "processed_tokens_per_s",
        "tflops",
        "mfu",
    ):
        assert key in rows[-1], key
    assert rows[-1]["tokens"] == STEPS * 8 * 32
    assert rows[-1]["processed_tokens_per_s"] == pytest.approx(2 * rows[-1]["tokens_per_s"])
    assert sorted(int(s) for s in os.listdir(os.path.join(wd, "checkpoints"))) == [5, 10, 15, 20]
    assert glob.glob(os.path.join(wd, "tensorboard", "events.out.tfevents.*"))
    for name in ("config.json", "model_config.json", "version.json"):
        assert json.load(open(os.path.join(wd, name)))
    assert json.load(open(os.path.join(wd, "model_config.json")))["vocab_size"] == 384  # 259 padded
    from phd_jax.train import load_run_config, restore_params

    assert load_run_config(wd).num_steps == STEPS
    cfg, params, step = restore_params(os.path.join(wd, "checkpoints", "5"))
    assert (cfg.name, step, params["embed"]["embedding"].shape) == ("PHD-2", 5, (384, 32))
    assert "--- sample from PHD-2 (step 20) ---" in stdout
    assert "checkpoints in checkpoints/ every 5 steps" in stdout


def _check_resumed(reference_wd, wd, resumed_from, stdout):
    assert f"resuming from step {resumed_from}" in stdout
    ref, got = metrics(reference_wd), metrics(wd)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))  # no step twice
    for a, b in zip(ref[resumed_from:], got[resumed_from:]):
        assert a["loss"] == b["loss"] and a["grad_norm"] == b["grad_norm"], (a["step"], a["loss"], b["loss"])
    cfg_a, pa, step_a = final_params(reference_wd)
    cfg_b, pb, step_b = final_params(wd)
    assert cfg_a == cfg_b and step_a == step_b == STEPS
    import jax

    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
        assert np.array_equal(np.asarray(x), np.asarray(y))


def test_sigkill_after_checkpoint_resumes_bitwise(reference, tmp_path):
    wd = str(tmp_path / "run")
    out = train(wd, "--config.sample_tokens=0", fault=("kill_after_save", 10))
    assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]
    assert max(r["step"] for r in metrics(wd)) >= 10
    out = train(wd, "--config.sample_tokens=0")
    assert out.returncode == 0, out.stderr[-3000:]
    _check_resumed(reference[0], wd, 10, out.stdout)


@pytest.mark.parametrize("fault,name", [("term", "SIGTERM"), ("int", "SIGINT")])
def test_sigterm_saves_exits_0_and_resumes_bitwise(reference, tmp_path, fault, name):
    """Preemption (SIGTERM) or a Ctrl-C (SIGINT): a checkpoint at the current step, exit 0, and the
    rerun continues bit for bit."""
    wd = str(tmp_path / "run")
    out = train(wd, "--config.sample_tokens=0", fault=(fault, 13))
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"{name}: saved a checkpoint at step 13" in out.stdout
    assert "13" in os.listdir(os.path.join(wd, "checkpoints"))
    out = train(wd, "--config.sample_tokens=0")
    assert out.returncode == 0, out.stderr[-3000:]
    _check_resumed(reference[0], wd, 13, out.stdout)


def test_sigterm_during_the_final_sample_exits_0_with_the_run_saved(tmp_path):
    """Training is saved before the sample: a signal there skips it with one line, exit 0."""
    wd = str(tmp_path / "run")
    short = ["--config.num_steps=2", "--config.checkpoint_every=2", "--config.eval_every=2"]
    out = train(wd, "--config.sample_tokens=8", *short, fault=("term_in_sample", 0))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "SIGTERM: skipped the sample after training (training is complete and saved)" in out.stdout
    assert "--- sample" not in out.stdout and "Traceback" not in out.stderr
    assert "2" in os.listdir(os.path.join(wd, "checkpoints")) and [r["step"] for r in metrics(wd)] == [1, 2]


def test_killed_during_async_save_restores_last_complete(reference, tmp_path):
    wd = str(tmp_path / "run")
    out = train(wd, "--config.sample_tokens=0", fault=("kill_during_save", 15))
    assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]
    names = os.listdir(os.path.join(wd, "checkpoints"))
    assert [n for n in names if n.startswith("15.orbax-checkpoint-tmp")], names  # the partial save
    assert "15" not in names and "10" in names
    out = train(wd, "--config.sample_tokens=0")
    assert out.returncode == 0, out.stderr[-3000:]
    _check_resumed(reference[0], wd, 10, out.stdout)


def test_cli_errors_are_one_line_and_touch_nothing(reference, tmp_path):
    wd = reference[0]
    before = sorted(os.listdir(wd)), open(os.path.join(wd, "metrics.jsonl")).read()
    for extra, message in [
        (
            ["--config.learnin_rate=1"],
            "error: --config.learnin_rate: 'learnin_rate' is not a config key (did you mean 'learning_rate'?)",
        ),
        (["--config.model.d_model=64"], "error: config.model.d_model=64 does not match the run in workdir"),
        (["--config=configs/tiny.py:PHD-9x"], "error: config argument 'PHD-9x' is invalid: allowed: vanilla"),
        (["--config.model.d_model=x"], "error: flag --config.model.d_model=x: invalid literal for int()"),
        (["--config=configs/nope.py"], "error: Configuration is not available because of an earlier failure"),
    ]:
        out = train(wd, *extra)
        assert out.returncode == 2
        assert out.stderr.strip().startswith(message), out.stderr[-2000:]
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr[-2000:]
    assert (sorted(os.listdir(wd)), open(os.path.join(wd, "metrics.jsonl")).read()) == before


def test_config_file_with_model_name_reaches_validation(tmp_path):
    """`--config=FILE:NAME` loads (the name is not part of the file's path) and the run's checks
    then speak: here a sequence longer than the model, one line, nothing written."""
    out = subprocess.run(
        [
            sys.executable,
            "train.py",
            f"--workdir={tmp_path / 'w'}",
            "--config=configs/tiny.py:PHD-SWA-2-4-inf",
            "--config.seq_len=100000",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2
    assert out.stderr.strip() == "error: config.seq_len=100000 is invalid: exceeds config.model.max_seq_len=64"
    assert not (tmp_path / "w").exists()


MULTI_PROCESS_EXIT_S = 300  # both processes train 20 steps, sample and exit well within this


def test_two_processes_agree_with_one(reference, tmp_path):
    """jax.distributed on localhost (gloo CPU collectives), 2 processes x 4 devices = one mesh of 8,
    with the default settings (the sample after training included): every process exits 0 in time."""
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    wd = str(tmp_path / "run")
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "train.py",
                f"--workdir={wd}",
                *ARGS,
                f"--coordinator_address=localhost:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ],
            cwd=ROOT,
            env=dict(os.environ, **env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    try:
        outs = [p.communicate(timeout=MULTI_PROCESS_EXIT_S) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(
            f"the two processes did not both exit within {MULTI_PROCESS_EXIT_S} s: "
            + repr([p.communicate()[0][-1500:] for p in procs])
        )
    for p, (_, e) in zip(procs, outs):
        assert p.returncode == 0, e[-3000:]
    assert "2 process(es)" in outs[0][0] and "over 8 cpu device(s)" in outs[0][0]
    # only process 0 logs (process 1 prints only gloo's own C++ lines, which may interleave mid-line)
    assert "step 1/" in outs[0][0]
    assert "--- sample from PHD-2 (step 20) ---" in outs[0][0]
    assert not [
        line for line in outs[1][0].splitlines() if re.match(r"(model |workdir |step \d|resuming|--- sample)", line)
    ], outs[1][0]
    ref, got = metrics(reference[0]), metrics(wd)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    for a, b in zip(ref, got):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5), a["step"]
    assert got[-1]["val_loss"] == pytest.approx(ref[-1]["val_loss"], rel=1e-5)
    assert re.search(r"\b20\b", " ".join(os.listdir(os.path.join(wd, "checkpoints"))))


# ---- random kills: every logged loss and the final parameters as in the uninterrupted run ----------

KILLS_DEFAULT_SEED = 0
KILLS_LONG = 20  # the opt-in `-m kills` version (docs/testing.md)


def _run_until(wd, cache, moment, rng, timeout=300):
    """Start train.py and interrupt it at a random (seeded) moment of kind `moment`:
    `compile` SIGKILL 0-4 s after the run printed its model line (compiling the step);
    `setup`   SIGTERM or SIGINT 0-1 s after `resuming from step` or the model line (compilation);
    `save`    SIGKILL 0-0.3 s after the line of a checkpoint step (the async save runs);
    `between` SIGKILL 0-0.3 s after the line of a step between checkpoints.
    Returns (signal sent or None if the run ended first, return code, output)."""
    import random
    import threading
    import time

    cmd = [sys.executable, "train.py", f"--workdir={wd}", *ARGS, "--config.sample_tokens=0"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", JAX_COMPILATION_CACHE_DIR=cache)
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(iter(p.stdout.readline, "")), daemon=True)
    reader.start()
    assert isinstance(rng, random.Random)
    every = int(next(a for a in ARGS if a.startswith("--config.checkpoint_every=")).split("=")[1])
    target = None  # (regex that arms the signal, signal, delay)
    if moment == "compile":
        target = (r"^model ", signal.SIGKILL, rng.uniform(0, 4))
    elif moment == "setup":
        target = (r"^(resuming from step|model )", rng.choice([signal.SIGTERM, signal.SIGINT]), rng.uniform(0, 1))
    else:
        done = max([0] + [int(m.group(1)) for m in map(re.compile(r"^(\d+)$").match, _ckpts(wd)) if m])
        steps = [s for s in range(done + 1, STEPS) if (s % every == 0) == (moment == "save")]
        steps = steps or list(range(done + 1, STEPS)) or [STEPS]  # near the end: any step left
        target = (rf"^step {rng.choice(steps)}/", signal.SIGKILL, rng.uniform(0, 0.3))
    deadline, armed, sent = time.time() + timeout, None, None
    while p.poll() is None and time.time() < deadline:
        if armed is None and any(re.match(target[0], line) for line in list(lines)):
            armed = time.time() + target[2]
        if armed is not None and time.time() >= armed:
            p.send_signal(target[1])
            sent = target[1]
            break
        time.sleep(0.005)
    p.wait(timeout=timeout)
    reader.join(timeout=10)
    return sent, p.returncode, "".join(lines)


def _ckpts(wd):
    path = os.path.join(wd, "checkpoints")
    return os.listdir(path) if os.path.isdir(path) else []


def _random_kills(reference, tmp_path, moments, seed, every_one_sent=False):
    import random

    rng = random.Random(seed)
    wd, cache = str(tmp_path / "run"), str(tmp_path / "jax_cache")  # its own cache: a kill may hit a write
    for i, moment in enumerate(moments):
        sent, rc, out = _run_until(wd, cache, moment, rng)
        where = f"seed {seed}, interruption {i} ({moment}, {sent and sent.name})"
        assert sent is not None or not every_one_sent, f"{where}: the run ended first: {out[-2000:]}"
        if sent in (signal.SIGTERM, signal.SIGINT):  # a clean stop: exit 0, a consistent workdir
            assert rc == 0, f"{where}: {out[-3000:]}"
            assert re.search(rf"{sent.name}: (saved a checkpoint at step|stopped before step)", out), where
        elif sent is not None:
            assert rc == -signal.SIGKILL, f"{where}: {out[-3000:]}"
        else:
            assert rc == 0, f"{where}: {out[-3000:]}"
    out = train(wd, "--config.sample_tokens=0", env={"JAX_COMPILATION_CACHE_DIR": cache})
    assert out.returncode == 0, out.stderr[-3000:]
    ref, got = metrics(reference[0]), metrics(wd)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))  # no step lost or logged twice
    for a, b in zip(ref, got):
        assert (a["loss"], a["grad_norm"]) == (b["loss"], b["grad_norm"]), (seed, a["step"])
    import jax

    for x, y in zip(jax.tree.leaves(final_params(reference[0])[1]), jax.tree.leaves(final_params(wd)[1])):
        assert np.array_equal(np.asarray(x), np.asarray(y)), seed


def test_random_kills_lose_nothing(reference, tmp_path):
    """SIGKILL while compiling, a SIGTERM or Ctrl-C during restore/compilation, SIGKILL during an
    async save: each restart continues, and the end is bitwise the uninterrupted run's."""
    _random_kills(reference, tmp_path, ["compile", "setup", "save"], KILLS_DEFAULT_SEED, every_one_sent=True)


@pytest.mark.kills
@pytest.mark.parametrize("seed", [1])
def test_many_random_kills_lose_nothing(reference, tmp_path, seed):
    moments = ["compile"] + ["setup", "save", "between", "save"] * ((KILLS_LONG - 1) // 4) + ["between"] * 3
    _random_kills(reference, tmp_path, moments[:KILLS_LONG], seed)
