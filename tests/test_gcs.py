"""phd_jax on Cloud Storage, against the local emulator (tests/gcs_emulator.py): the path layer
(phd_jax.paths) on local paths and gs:// alike, then `train.py`/`eval.py` with gs:// workdirs and
data."""

import json
import os
import subprocess
import sys
import types
import uuid

import numpy as np
import pytest
from gcs_emulator import point_clients

from phd_jax import paths


@pytest.fixture(params=["local", "gs"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "root")
    return request.getfixturevalue("gcs")


def test_paths_write_read_list_remove(root):
    f = f"{root}/a/config.json"
    paths.makedirs(f"{root}/a")
    assert not paths.exists(f)
    paths.write_atomic(f, '{"x": 1}\n')
    assert paths.read_text(f) == '{"x": 1}\n' and paths.isfile(f) and paths.isdir(f"{root}/a")
    paths.write_atomic(f, b'{"x": 2}\n')  # a rewrite replaces the whole file
    assert paths.read_bytes(f) == b'{"x": 2}\n'
    with pytest.raises(FileExistsError):  # exclusive: only the first writer wins
        paths.write_atomic(f, "second writer", exclusive=True)
    assert paths.read_text(f) == '{"x": 2}\n'
    paths.write_atomic(f"{root}/a/b.txt", "b", exclusive=True)
    paths.makedirs(f"{root}/a/sub")
    paths.write_atomic(f"{root}/a/sub/c.txt", "c")
    assert sorted(paths.listdir(f"{root}/a")) == ["b.txt", "config.json", "sub"]  # no temporary file left
    assert paths.glob(f"{root}/a/*.txt") == [f"{root}/a/b.txt"]
    assert paths.glob(f"{root}/**/*.txt") == [f"{root}/a/b.txt", f"{root}/a/sub/c.txt"]
    assert paths.glob(f"{root}/a/*.none") == []
    assert paths.size_and_mtime(f"{root}/a/sub/c.txt")[0] == 1
    with pytest.raises(FileNotFoundError):
        paths.listdir(f"{root}/missing")
    paths.remove(f"{root}/a/b.txt")
    assert not paths.exists(f"{root}/a/b.txt")
    paths.write_atomic(f"{root}/a/crlf.txt", "é\r\nb\n".encode())
    with paths.open_file(f"{root}/a/crlf.txt", encoding="utf-8") as f:  # text as open() reads it
        assert f.read() == "é\nb\n"
    paths.rmtree(f"{root}/a")
    assert not paths.exists(f"{root}/a")


def test_paths_staged(root, tmp_path):
    paths.makedirs(f"{root}/m")
    for name in ("tokenizer.json", "model.safetensors", "other.bin"):
        paths.write_atomic(f"{root}/m/{name}", name.encode())
    with paths.staged(f"{root}/m", names=("tokenizer.json", "model.safetensors", "absent")) as local:
        assert not paths.is_remote(local)
        expected = ["model.safetensors", "tokenizer.json"] + (["other.bin"] if local == root + "/m" else [])
        assert sorted(os.listdir(local)) == sorted(expected)  # a local folder is used in place
        assert open(os.path.join(local, "tokenizer.json"), "rb").read() == b"tokenizer.json"
    assert os.path.exists(local) == (not root.startswith("gs://"))  # a staged copy is removed
    with paths.staged(f"{root}/m/other.bin") as local:
        assert open(local, "rb").read() == b"other.bin"


def test_paths_absolute_keeps_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert paths.absolute("gs://b/run/") == "gs://b/run" and paths.shown("gs://b/run") == "gs://b/run"
    assert paths.absolute("run") == os.path.join(str(tmp_path), "run") and paths.shown("run") == "run"
    assert paths.is_remote("gs://b/x") and not paths.is_remote("/tmp/x")
    with pytest.raises(ValueError, match="cannot append"):
        paths.open_file("gs://b/x.jsonl", "a")


# ---- metrics.jsonl as segments ----------------------------------------------------------------


def _log(workdir, steps, start, offset):
    from phd_jax.train.metrics import MetricWriter

    with MetricWriter(workdir, start_step=start, progress=False) as w:
        for step in steps:
            w.write(step, {"loss": step + offset})
            if step % 3 == 0:
                w.sync()  # a checkpoint
        return w.dropped


def test_metric_segments_read_back_as_the_local_file(gcs, tmp_path):
    """The same writes (a run, a resume from step 5 after it logged 8, a run started over at 0)
    read back the same from a local metrics.jsonl and from gs:// segments, none rewritten."""
    from phd_jax.train.metrics import SEGMENTS_DIR, read_metrics

    got, first = {}, None
    for wd in (str(tmp_path / "run"), f"{gcs}/run"):
        dropped = [_log(wd, range(1, 9), 0, 0.0)]
        if paths.is_remote(wd):
            first = _objects(f"{wd}/{SEGMENTS_DIR}")
        dropped.append(_log(wd, range(6, 12), 5, 0.5))
        got[wd] = [read_metrics(wd)]
        dropped.append(_log(wd, range(1, 4), 0, 0.25))  # started over: replaces everything
        got[wd].append(read_metrics(wd))
        got[wd].append(dropped)
    local, remote = got.values()
    assert local == remote
    assert [(r["step"], r["loss"]) for r in local[0]] == [(s, s + (0.5 if s > 5 else 0.0)) for s in range(1, 12)]
    assert [(r["step"], r["loss"]) for r in local[1]] == [(s, s + 0.25) for s in range(1, 4)]
    assert local[2] == [0, 3, 11]
    assert not paths.exists(f"{gcs}/run/metrics.jsonl")
    objects = _objects(f"{gcs}/run/{SEGMENTS_DIR}")
    assert sorted(name.split("-")[0] for name in objects) == ["000001"] * 3 + ["000002"] * 3 + ["000003"]
    assert len(first) == 3 and all(objects[n]["generation"] == info["generation"] for n, info in first.items())


def _objects(prefix) -> dict:
    """{name below prefix: object info} of every object under `prefix` (fresh listing)."""
    import fsspec

    fs = fsspec.filesystem("gs")
    fs.invalidate_cache()
    root = prefix.removeprefix("gs://").rstrip("/")
    return {k[len(root) + 1 :]: v for k, v in fs.find(root, detail=True).items()}


# ---- train.py and eval.py with a gs:// workdir ------------------------------------------------

from train_runs import ARGS, FAULTY, ROOT, STEPS  # noqa: E402, F401
from train_runs import metrics as local_metrics  # noqa: E402

TRAIN, EVAL = os.path.join(ROOT, "train.py"), os.path.join(ROOT, "eval.py")
GS_ARGS = [a.replace("configs/tiny.py", os.path.join(ROOT, "configs", "tiny.py")) for a in ARGS]


def run(script, *args, env, cwd, fault=None, timeout=600):
    """`python SCRIPT ARGS` in `cwd` (an empty folder: nothing may land there)."""
    cmd = [sys.executable, script, *args]
    full = {**os.environ, **env}
    if fault:
        cmd[1:2] = ["-c", FAULTY.replace('run_path("train.py"', f"run_path({TRAIN!r}")]
        full.update(FAULT=fault[0], FAULT_STEP=str(fault[1]))
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full)


@pytest.fixture(scope="module")
def gs_env(gcs_emulator):
    """This module's process pointed at the emulator; the environment for its subprocesses."""
    with pytest.MonkeyPatch.context() as mp:
        point_clients(gcs_emulator, mp)
        yield {**gcs_emulator.env, "PYTHONPATH": ROOT}


@pytest.fixture(scope="module")
def gs_run(gs_env, gcs_emulator, tmp_path_factory):
    """train.py on gs://: preempted (SIGTERM) after step 13, then run again to the end."""
    cwd = str(tmp_path_factory.mktemp("cwd"))
    wd = f"gs://{gcs_emulator.bucket}/runs-{uuid.uuid4().hex[:8]}/run"
    first = run(TRAIN, f"--workdir={wd}", *GS_ARGS, "--config.sample_tokens=0", env=gs_env, cwd=cwd, fault=("term", 13))
    assert first.returncode == 0, first.stderr[-3000:]
    second = run(TRAIN, f"--workdir={wd}", *GS_ARGS, "--config.sample_tokens=0", env=gs_env, cwd=cwd)
    assert second.returncode == 0, second.stderr[-3000:]
    return types.SimpleNamespace(workdir=wd, cwd=cwd, first=first, second=second, env=gs_env)


def test_train_py_on_gs_writes_every_workdir_file_to_the_bucket(gs_run):
    wd = gs_run.workdir
    assert f"workdir {wd}: checkpoints in checkpoints/ every 5 steps" in gs_run.first.stdout
    assert "SIGTERM: saved a checkpoint at step 13" in gs_run.first.stdout
    names = _objects(wd)
    top = {n.split("/")[0] for n in names}
    assert top == {"config.json", "model_config.json", "version.json", "checkpoints", "metrics.jsonl.d", "tensorboard"}
    steps = {n.split("/")[1] for n in names if n.startswith("checkpoints/")}
    assert steps == {"5", "10", "13", "15", "20"}
    assert all(f"checkpoints/{s}/commit_success.txt" in names for s in steps)  # complete, on an object store
    assert [n for n in names if n.startswith("tensorboard/events.out.tfevents.")]
    assert json.loads(paths.read_text(f"{wd}/model_config.json"))["vocab_size"] == 384
    from phd_jax.train import load_run_config

    assert load_run_config(wd).num_steps == STEPS
    # Nothing of the workdir on local disk: not in the working directory, not as a `gs:` folder.
    assert os.listdir(gs_run.cwd) == [] and not os.path.exists(os.path.join(ROOT, "gs:"))


def test_sigterm_on_gs_resumes_bitwise_as_on_local_disk(gs_run, reference):
    import jax

    from phd_jax.train import restore_params
    from phd_jax.train.metrics import read_metrics

    assert "resuming from step 13" in gs_run.second.stdout
    ref, got = local_metrics(reference[0]), read_metrics(gs_run.workdir)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))  # no step lost or twice
    for a, b in zip(ref, got):
        assert (a["loss"], a["grad_norm"], a.get("val_loss")) == (b["loss"], b["grad_norm"], b.get("val_loss")), a[
            "step"
        ]
    cfg_a, pa, step_a = restore_params(reference[0])
    cfg_b, pb, step_b = restore_params(gs_run.workdir)
    assert cfg_a == cfg_b and step_a == step_b == STEPS
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
        assert np.array_equal(np.asarray(x), np.asarray(y))


def test_eval_py_reads_gs_and_writes_its_results_there(gs_run, reference):
    out = run(EVAL, f"--workdir={gs_run.workdir}", "--loss", env=gs_run.env, cwd=gs_run.cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(paths.read_text(f"{gs_run.workdir}/eval/{STEPS}.json"))
    from phd_jax.evaluation.run import evaluate_checkpoint

    want = evaluate_checkpoint(reference[0], loss=True, write=False)  # the local run, in this process
    assert got["loss"] == want["loss"] and got["step"] == want["step"] == STEPS
    assert got["workdir"] == gs_run.workdir
    assert os.listdir(gs_run.cwd) == []


def test_workdir_errors_on_gs_as_locally_and_foreign_objects_untouched(gs_run, gcs_emulator):
    """Another run's workdir, and a prefix holding objects phd_jax did not write: the local
    errors, one line, and not one object written, rewritten or removed."""
    foreign = f"gs://{gcs_emulator.bucket}/foreign-{uuid.uuid4().hex[:8]}"
    paths.write_atomic(f"{foreign}/notes.txt", "mine")
    paths.write_atomic(f"{foreign}/metrics.jsonl", '{"step": 1}\n')  # a name phd_jax writes, but not config.json
    before = {p: _objects(p) for p in (gs_run.workdir, foreign)}
    for wd, extra, message in [
        (
            gs_run.workdir,
            "--config.model.d_model=64",
            "error: config.model.d_model=64 does not match the run in workdir",
        ),
        (
            foreign,
            "--config.seed=1",
            f"error: workdir={foreign!r} is invalid: it holds 'metrics.jsonl' but no config.json",
        ),
    ]:
        out = run(TRAIN, f"--workdir={wd}", *GS_ARGS, extra, env=gs_run.env, cwd=gs_run.cwd)
        assert out.returncode == 2, out.stderr[-2000:]
        assert out.stderr.strip().startswith(message) and len(out.stderr.strip().splitlines()) == 1, out.stderr[-2000:]
    after = {p: _objects(p) for p in (gs_run.workdir, foreign)}
    gen = lambda objs: {n: (o["generation"], o["md5Hash"]) for n, o in objs.items()}  # noqa: E731
    assert {p: gen(o) for p, o in after.items()} == {p: gen(o) for p, o in before.items()}
    assert os.listdir(gs_run.cwd) == []


# ---- data and weights from the bucket ---------------------------------------------------------


def test_text_source_and_hf_checkpoint_from_the_bucket(gs_run, gs_env, tmp_path):
    """`text:gs://.../docs/*.txt` reads the same documents as the local files; `hf:gs://...`
    loads the same model as the local folder (staged, then removed); train.py trains on both."""
    import tempfile

    import jax

    from phd_jax.data.sources import text_documents
    from phd_jax.interop import load_hf_llama, save_hf_llama
    from phd_jax.train import restore_params

    bucket = gs_run.workdir.rsplit("/", 1)[0]
    docs = tmp_path / "docs"
    docs.mkdir()
    rng = np.random.default_rng(0)
    words = ["thou", "art", "the", "king", "of", "all", "that", "is", "fair", "and", "good", "night"]
    for i in range(6):
        (docs / f"{i}.txt").write_text(" ".join(rng.choice(words, 600)) + "\n")
    paths.copy_to(str(docs), f"{bucket}/docs")
    local, remote = text_documents("t", f"{docs}/*.txt"), text_documents("t", f"{bucket}/docs/*.txt")
    assert len(remote) == len(local) == 6 and [remote[i] for i in range(6)] == [local[i] for i in range(6)]

    cfg, params, _ = restore_params(gs_run.workdir)
    save_hf_llama(params, cfg, str(tmp_path / "hf"))
    paths.copy_to(str(tmp_path / "hf"), f"{bucket}/hf")
    staged_before = {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("phd_jax-staged-")}
    cfg_l, p_l = load_hf_llama(str(tmp_path / "hf"))
    cfg_r, p_r = load_hf_llama(f"{bucket}/hf")
    assert cfg_r == cfg_l
    for x, y in zip(jax.tree.leaves(p_l), jax.tree.leaves(p_r)):
        assert np.array_equal(np.asarray(x), np.asarray(y))
    assert {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("phd_jax-staged-")} == staged_before

    wd = f"{bucket}/text-run"
    source, init = f"text:{bucket}/docs/*.txt", f"hf:{bucket}/hf"
    short = ["--config.num_steps=4", "--config.checkpoint_every=4", "--config.eval_every=4", "--config.sample_tokens=0"]
    out = run(TRAIN, f"--workdir={wd}", *GS_ARGS, *short, f"--config.data.source={source}",
              f"--config.init_from={init}", env=gs_env, cwd=gs_run.cwd)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"initialised the weights from {init}" in out.stdout
    from phd_jax.train.metrics import read_metrics

    rows = read_metrics(wd)
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and np.isfinite(rows[-1]["val_loss"])
    assert json.loads(paths.read_text(f"{wd}/config.json"))["data"]["source"] == source


# ---- multi-host ---------------------------------------------------------------------------------


def test_two_processes_share_a_gs_workdir(gs_env, gcs_emulator, reference, tmp_path):  # noqa: F811
    """jax.distributed on localhost (gloo CPU collectives), 2 processes x 4 devices, one gs://
    workdir: both write their checkpoint shards there, only process 0 writes the logs."""
    import socket

    from phd_jax.train.metrics import SEGMENTS_DIR, read_metrics

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    wd = f"gs://{gcs_emulator.bucket}/multi-{uuid.uuid4().hex[:8]}/run"
    env = {
        **os.environ,
        **gs_env,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0",
    }
    cwd = str(tmp_path)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                TRAIN,
                f"--workdir={wd}",
                *GS_ARGS,
                "--config.sample_tokens=0",
                f"--coordinator_address=localhost:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, e) in zip(procs, outs):
        assert p.returncode == 0, e[-3000:]
    assert "2 process(es)" in outs[0][0] and "step 1/" in outs[0][0] and "step 1/" not in outs[1][0]
    ref, got = local_metrics(reference[0]), read_metrics(wd)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    for a, b in zip(ref, got):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5), a["step"]
    names = _objects(wd)
    assert {n.split("-")[0] for n in names if n.startswith(SEGMENTS_DIR + "/")} == {
        f"{SEGMENTS_DIR}/000001"
    }  # one writer
    assert len([n for n in names if n.startswith("tensorboard/events.")]) == 1
    assert "checkpoints/20/commit_success.txt" in names
    # Both processes' shards: the parameters restore, equal to the one-process run's within float tolerance.
    import jax

    from phd_jax.train import restore_params

    _, pa, _ = restore_params(reference[0])
    _, pb, step = restore_params(wd)
    assert step == STEPS
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-4, atol=1e-5)
    assert os.listdir(cwd) == []


@pytest.mark.parametrize("where", ["local", "gs"])
def test_a_new_run_that_fails_removes_only_what_it_wrote(where, gs_env, gcs_emulator, tmp_path, monkeypatch):
    """A first run that fails after writing its JSON files but before its first step (here: the
    checkpoint manager cannot be created) leaves the workdir's foreign files exactly as they were."""
    from phd_jax.configs.tiny import get_config
    from phd_jax.train import checkpoint, trainer

    if where == "local":
        wd = str(tmp_path / "run")
        os.makedirs(wd)
    else:
        wd = f"gs://{gcs_emulator.bucket}/undo-{uuid.uuid4().hex[:8]}/run"
    paths.write_atomic(f"{wd}/notes.txt", "mine")

    def listing():
        if where == "local":
            return {n: open(os.path.join(wd, n)).read() for n in sorted(os.listdir(wd))}
        return {n: (o["generation"], o["md5Hash"]) for n, o in _objects(wd).items()}

    before = listing()
    written = []

    def manager(workdir, *a, **k):
        written.extend(sorted(paths.listdir(workdir)))
        raise OSError("no space left on device")

    monkeypatch.setattr(checkpoint, "manager", manager)
    config = get_config()
    config.num_steps = 1
    with pytest.raises(OSError, match="no space left"):
        trainer.train_and_evaluate(config, wd, progress=False)
    assert written == ["config.json", "model_config.json", "notes.txt", "version.json"]  # it had written
    assert listing() == before


def test_sweep_reads_a_gs_run_and_saves_its_results_locally(gs_run, tmp_path):
    """The study tooling on a gs:// workdir: finished (metrics end at num_steps with a validation
    loss, checkpoint committed), and its saved results are one local metrics.jsonl holding
    exactly `read_metrics`' records, plus the JSON files as written."""
    from experiments import sweep
    from phd_jax.train.metrics import read_metrics

    assert sweep.is_finished(gs_run.workdir, STEPS) and not sweep.is_finished(gs_run.workdir, STEPS + 1)
    assert sweep.steps_done(gs_run.workdir) == STEPS
    run_ = types.SimpleNamespace(workdir=gs_run.workdir, results_dir=str(tmp_path / "results"))
    dest = sweep.save_results(run_)
    assert sorted(os.listdir(dest)) == sorted(set(sweep.RESULT_FILES) - {"kprime.json"})  # kprime: its own step
    assert local_metrics(dest) == read_metrics(gs_run.workdir)
    assert open(os.path.join(dest, "config.json")).read() == paths.read_text(f"{gs_run.workdir}/config.json")
    assert sweep.is_saved_result(dest, STEPS)
