"""Resuming over a damaged newest checkpoint: each kind of damage (truncated or deleted data
files, the state's metadata deleted, a step orbax left unfinished) is skipped with one line, the
run continues from the previous good step and ends bit for bit where a run resumed from that
step ends; the damaged step is moved aside, never deleted. A transient error (permissions, an
I/O error) skips nothing and changes nothing; neither does a workdir where nothing restores."""

import errno
import json
import os
import shutil

import jax
import numpy as np
import pytest
from helpers import file_snapshot

from phd_jax.train import RestoreError, restore_params, train_and_evaluate
from phd_jax.train import restore as restore_lib
from phd_jax.train.restore import describe, is_transient

STEPS, EVERY = 8, 4  # checkpoints 4 and 8; the damaged one is 8, the fallback 4


def tiny_config(**kw):
    from phd_jax.configs.tiny import get_config

    c = get_config()
    c.num_steps, c.checkpoint_every, c.keep_checkpoints = STEPS, EVERY, 5
    c.log_every, c.eval_every, c.sample_tokens = 1, STEPS, 0
    c.async_checkpointing, c.compilation_cache = True, ""
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def losses(wd):
    with open(os.path.join(wd, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f)}


def params_of(wd, step=None):
    return [np.asarray(x) for x in jax.tree.leaves(restore_params(wd, step)[1])]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A run to step 8 (checkpoints 4 and 8) and the same run resumed from step 4 (8 removed)."""
    wd = str(tmp_path_factory.mktemp("damage") / "base")
    train_and_evaluate(tiny_config(), wd, progress=False)
    good = str(tmp_path_factory.mktemp("damage") / "good")
    shutil.copytree(wd, good)
    shutil.rmtree(os.path.join(good, "checkpoints", str(STEPS)))
    train_and_evaluate(tiny_config(), good, progress=False)
    return wd, good


def _data_files(step_dir):
    """The array data files of the state item (OCDBT's `d/` folders). Damage goes to all of them:
    a data file may hold only superseded records the restore never reads."""
    state = os.path.join(step_dir, "state")
    return [os.path.join(r, f) for r, _, fs in os.walk(state) if os.path.basename(r) == "d" for f in fs]


def _truncate(step_dir):
    for path in _data_files(step_dir):
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)


def _delete(step_dir):
    for path in _data_files(step_dir):
        os.remove(path)


def _unfinished(step_dir):  # what a save interrupted before orbax's commit leaves
    for item in ("", "state", "data"):
        os.remove(os.path.join(step_dir, item, "commit_success.txt"))
    meta = os.path.join(step_dir, "_CHECKPOINT_METADATA")
    m = json.load(open(meta))
    m["commit_timestamp_nsecs"] = None
    json.dump(m, open(meta, "w"))


DAMAGE = {
    "truncated": _truncate,
    "deleted": _delete,
    "no_metadata": lambda d: os.remove(os.path.join(d, "state", "_METADATA")),
    "unfinished": _unfinished,
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_newest_checkpoint_falls_back(base, tmp_path, capsys, kind):
    wd = str(tmp_path / "run")
    shutil.copytree(base[0], wd)
    bad = os.path.join(wd, "checkpoints", str(STEPS))
    DAMAGE[kind](bad)
    damaged_files = {os.path.relpath(p, bad): v[0] for p, v in file_snapshot(bad).items()}
    capsys.readouterr()
    train_and_evaluate(tiny_config(), wd, progress=False)
    out = capsys.readouterr().out
    notice = [line for line in out.splitlines() if line.startswith("skipping damaged checkpoint")]
    assert len(notice) == 1 and notice[0].startswith(f"skipping damaged checkpoint {STEPS} ("), out
    assert f"resuming from step {EVERY}" in out
    # the damaged step moved aside untouched; a new step 8 written in its place
    aside = os.path.join(wd, "checkpoints", f"{STEPS}.damaged")
    assert {os.path.relpath(p, aside): v[0] for p, v in file_snapshot(aside).items()} == damaged_files
    assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == sorted(["4", "8", "8.damaged"])
    good = base[1]
    for a, b in zip(params_of(good), params_of(wd)):
        assert np.array_equal(a, b)
    assert losses(wd) == losses(good)


def test_no_restorable_checkpoint_is_one_error_and_changes_nothing(base, tmp_path):
    wd = str(tmp_path / "run")
    shutil.copytree(base[0], wd)
    _truncate(os.path.join(wd, "checkpoints", str(STEPS)))
    os.remove(os.path.join(wd, "checkpoints", str(EVERY), "state", "_METADATA"))
    before = file_snapshot(wd)
    with pytest.raises(RestoreError) as e:
        train_and_evaluate(tiny_config(num_steps=12), wd, progress=False)  # config.json would change
    msg = str(e.value)
    assert "\n" not in msg and wd.split(os.sep)[-1] in msg and "steps 8, 4" in msg, msg
    assert "step 8: " in msg and "step 4: " in msg
    assert file_snapshot(wd) == before


@pytest.mark.parametrize(
    "error", [PermissionError(errno.EACCES, "Permission denied"), OSError(errno.EIO, "Input/output error")]
)
def test_transient_error_skips_nothing(base, tmp_path, monkeypatch, error):
    """Permissions or an I/O error while reading the newest checkpoint: retried, then one error;
    the newest checkpoint is not skipped and the workdir is unchanged."""
    from phd_jax.train import checkpoint as ckpt

    wd = str(tmp_path / "run")
    shutil.copytree(base[0], wd)
    calls = []

    def failing(mgr, step, abstract):
        calls.append(step)
        try:  # wrapped as orbax wraps the errors of its reading threads
            raise error
        except OSError as inner:
            raise ValueError("restore failed in a worker") from inner

    monkeypatch.setattr(ckpt, "restore", failing)
    monkeypatch.setattr(restore_lib, "RETRY_DELAY_S", 0.0)
    before = file_snapshot(wd)
    with pytest.raises(RestoreError, match=rf"cannot restore checkpoint {STEPS} .*nothing was skipped"):
        train_and_evaluate(tiny_config(num_steps=12), wd, progress=False)
    assert calls == [STEPS] * restore_lib.RESTORE_ATTEMPTS
    assert file_snapshot(wd) == before


def test_classification():
    assert is_transient(MemoryError()) and is_transient(ValueError("RESOURCE_EXHAUSTED: out of memory"))
    assert not is_transient(FileNotFoundError(errno.ENOENT, "No such file", "/x/d/abc"))
    assert not is_transient(ValueError("OUT_OF_RANGE: Error reading OCDBT manifest"))
    wrapped = RuntimeError("outer")
    wrapped.__cause__ = ValueError("DATA_LOSS: Error reading OCDBT node: truncated")
    assert describe(wrapped) == "ValueError: DATA_LOSS: Error reading OCDBT node: truncated"


def test_eval_refuses_a_damaged_latest_checkpoint(base, tmp_path):
    """eval.py never quietly evaluates an older step: one line naming the step and --step."""
    import subprocess
    import sys

    wd = str(tmp_path / "run")
    shutil.copytree(base[0], wd)
    DAMAGE["no_metadata"](os.path.join(wd, "checkpoints", str(STEPS)))
    before = file_snapshot(wd)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "eval.py", f"--workdir={wd}", "--loss"], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr[-3000:]
    assert f"checkpoints/{STEPS} (the latest) is damaged" in lines[0] and "--step (steps: 4)" in lines[0], lines
    assert file_snapshot(wd) == before


@pytest.fixture(params=["local", "gs"])
def store(request, tmp_path):
    """A local folder, or a gs:// prefix on the local GCS emulator."""
    return str(tmp_path / "root") if request.param == "local" else request.getfixturevalue("gcs")


def test_move_aside_keeps_every_file_locally_and_on_gs(store):
    """A damaged step moves to <step>.damaged (renamed locally; copied, then removed, on an object
    store), beside an earlier one: every file arrives unchanged, nothing stays under <step>."""
    from phd_jax import paths

    ck = f"{store}/checkpoints"
    files = {"_CHECKPOINT_METADATA": "{}", "state/d/abc": "data \x00 bytes", "data/metadata": "{}"}
    for rel, text in files.items():
        paths.makedirs(os.path.dirname(f"{ck}/8/{rel}"))
        paths.write_atomic(f"{ck}/8/{rel}", text)
    paths.makedirs(f"{ck}/8.damaged")
    paths.write_atomic(f"{ck}/8.damaged/earlier", "first")  # an earlier damaged step 8 stays
    moved = str(restore_lib.move_aside(ck, 8))
    assert moved == f"{ck}/8.damaged-2"
    assert not paths.exists(f"{ck}/8") and paths.read_text(f"{ck}/8.damaged/earlier") == "first"
    for rel, text in files.items():
        assert paths.read_text(f"{moved}/{rel}") == text
