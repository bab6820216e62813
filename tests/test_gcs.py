"""phd_jax on Cloud Storage, against the local emulator (tests/gcs_emulator.py): the path layer
(phd_jax.paths) on local paths and gs:// alike, then `train.py`/`eval.py` with gs:// workdirs and
data."""

import os

import pytest

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
