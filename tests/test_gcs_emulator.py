"""The gs:// stack against a local emulator (tests/gcs_emulator.py): etils.epath (gcsfs), orbax
checkpoints (tensorstore + gcsfs), tensorboardX event files (google-cloud-storage), a fresh
process configured only through its environment, and TFDS `data_source` (array_record)."""

import os
import struct
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath


def test_emulator_starts_within_seconds(gcs_emulator):
    assert gcs_emulator.start_seconds < 5, gcs_emulator.start_seconds


def test_epath_on_gcs(gcs):
    root = epath.Path(gcs)
    t0 = time.monotonic()
    (root / "a" / "x.txt").write_text("hello")
    (root / "a" / "y.json").write_text("{}")
    (root / "a" / "sub" / "z.txt").write_bytes(b"\x00\x01")
    assert (root / "a" / "x.txt").read_text() == "hello"
    assert (root / "a" / "sub" / "z.txt").read_bytes() == b"\x00\x01"
    assert (root / "a" / "x.txt").exists() and (root / "a" / "x.txt").is_file()
    assert (root / "a").exists() and (root / "a").is_dir() and (root / "a" / "sub").is_dir()
    assert not (root / "missing.txt").exists()
    assert sorted(p.name for p in (root / "a").iterdir()) == ["sub", "x.txt", "y.json"]
    assert sorted(p.name for p in (root / "a").glob("*.txt")) == ["x.txt"]
    assert str(next((root / "a").glob("*.json"))) == f"{gcs}/a/y.json"
    with pytest.raises(NotImplementedError):  # epath refuses recursive globs on gs://
        list(root.glob("**/*.txt"))
    with (root / "a" / "x.txt").open() as f:
        assert f.read() == "hello"
    assert (root / "a" / "x.txt").stat().length == 5
    # Directories do not exist on GCS: mkdir is accepted and creates nothing.
    (root / "empty" / "dir").mkdir(parents=True, exist_ok=True)
    assert not (root / "empty").exists()
    # No append on GCS: gcsfs warns and OVERWRITES. Append-only logs (metrics.jsonl) need another way.
    (root / "a" / "log.txt").write_text("line 1\n")
    with pytest.warns(UserWarning, match="Append mode"), (root / "a" / "log.txt").open("a") as f:
        f.write("line 2\n")
    assert (root / "a" / "log.txt").read_text() == "line 2\n"
    (root / "a" / "log.txt").unlink()
    # rename = copy + delete (a file, then a whole "directory" prefix); the destination's parent
    # must already hold an object. gcsfs tries the objects.moveTo API first; the emulator answers
    # 400 and gcsfs logs a warning and falls back.
    (root / "a" / "x.txt").rename(root / "a" / "renamed.txt")
    assert not (root / "a" / "x.txt").exists() and (root / "a" / "renamed.txt").read_text() == "hello"
    (root / "a" / "sub").rename(root / "a" / "moved")
    assert not (root / "a" / "sub").exists() and (root / "a" / "moved" / "z.txt").read_bytes() == b"\x00\x01"
    (root / "a").rmtree()
    assert not (root / "a").exists() and not root.exists()  # the last object gone, the "directory" too
    assert time.monotonic() - t0 < 20  # no 60 s gRPC probe on the way


def test_orbax_checkpoint_manager_on_gcs(gcs):
    import orbax.checkpoint as ocp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(jax.devices()), ("d",))
    tree = {
        "w": jax.device_put(jnp.arange(32.0).reshape(8, 4), NamedSharding(mesh, PartitionSpec("d"))),
        "b": jnp.ones(5, jnp.bfloat16),
        "step": jnp.int32(7),
    }
    directory = f"{gcs}/run/checkpoints"
    options = ocp.CheckpointManagerOptions(max_to_keep=2, create=True, enable_async_checkpointing=True)
    with ocp.CheckpointManager(directory, options=options) as mngr:
        for step in (1, 2, 3):
            mngr.save(step, args=ocp.args.StandardSave(jax.tree.map(lambda x, s=step: x + s, tree)))
        mngr.wait_until_finished()
        assert mngr.all_steps() == [2, 3]  # step 1 deleted by max_to_keep
    with ocp.CheckpointManager(directory, options=options) as mngr:  # a resumed run
        assert mngr.all_steps() == [2, 3] and mngr.latest_step() == 3
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
        restored = mngr.restore(3, args=ocp.args.StandardRestore(target))
    for k in tree:
        expected = np.asarray(tree[k] + 3)
        assert restored[k].dtype == expected.dtype and np.array_equal(np.asarray(restored[k]), expected), k
    assert restored["w"].sharding == tree["w"].sharding
    # On gs:// orbax writes in place and marks a finished step with commit_success.txt (no rename).
    steps = epath.Path(directory)
    assert sorted(p.name for p in steps.iterdir()) == ["2", "3"]
    assert (steps / "3" / "commit_success.txt").exists()
    assert not [p for p in steps.iterdir() if "tmp" in p.name]


def _events(data):
    from tensorboardX.proto import event_pb2

    out, pos = [], 0
    while pos < len(data):
        (n,) = struct.unpack("<Q", data[pos : pos + 8])
        ev = event_pb2.Event()
        ev.ParseFromString(data[pos + 12 : pos + 12 + n])
        out.append(ev)
        pos += 12 + n + 4
    return out


def test_tensorboardx_writes_gcs(gcs):
    from tensorboardX import SummaryWriter

    logdir = f"{gcs}/run/tensorboard"
    writer = SummaryWriter(logdir)
    gcs_writer = writer.file_writer.event_writer._ev_writer._py_recordio_writer._writer  # GCSRecordWriter
    for step in range(3):
        writer.add_scalar("train/loss", 1.0 / (step + 1), step)
    writer.flush()
    writer.add_scalar("train/loss", 0.125, 3)
    writer.close()
    # An atexit hook keeps the writer alive, and GCSRecordWriter.__del__ uploads the whole file
    # once more at interpreter exit: with the emulator gone, that retries for 120 s.
    gcs_writer.flush = lambda: None
    (event_file,) = epath.Path(logdir).glob("events.out.tfevents.*")
    scalars = [(e.step, v.tag, v.simple_value) for e in _events(event_file.read_bytes()) for v in e.summary.value]
    expected = [(step, "train/loss", float(np.float32(v))) for step, v in enumerate([1.0, 0.5, 1 / 3, 0.125])]
    assert scalars == expected


def test_google_cloud_storage_client(gcs, gcs_emulator):
    from google.api_core.exceptions import PreconditionFailed
    from google.cloud import storage

    client = storage.Client()  # STORAGE_EMULATOR_HOST: anonymous credentials
    prefix = gcs.removeprefix(f"gs://{gcs_emulator.bucket}/")
    blob = client.bucket(gcs_emulator.bucket).blob(f"{prefix}/x.bin")
    blob.upload_from_string(b"one", if_generation_match=0)
    with pytest.raises(PreconditionFailed):  # the emulator enforces conditional writes
        client.bucket(gcs_emulator.bucket).blob(f"{prefix}/x.bin").upload_from_string(b"two", if_generation_match=0)
    assert epath.Path(f"{gcs}/x.bin").read_bytes() == b"one"
    assert [b.name for b in client.list_blobs(gcs_emulator.bucket, prefix=prefix)] == [f"{prefix}/x.bin"]


def test_subprocess_configured_by_environment(gcs, gcs_emulator):
    """A fresh process (train.py, eval.py) reaches the emulator with `gcs_emulator.env` alone."""
    epath.Path(f"{gcs}/in.txt").write_text("from the parent")
    code = """if 1:
        import sys, numpy as np, tensorstore as ts
        from etils import epath
        root = sys.argv[1]
        text = epath.Path(root + "/in.txt").read_text()
        epath.Path(root + "/out.txt").write_text(text + ", and back")
        arr = ts.open({"driver": "zarr3", "kvstore": root + "/arr/"}, create=True, dtype=ts.int32, shape=[3]).result()
        arr.write(np.arange(3, dtype=np.int32)).result()
    """
    env = {k: v for k, v in os.environ.items() if k not in gcs_emulator.env}  # only what is passed
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-c", code, gcs],
        env={**env, **gcs_emulator.env},
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert time.monotonic() - t0 < 30
    assert epath.Path(f"{gcs}/out.txt").read_text() == "from the parent, and back"
    assert (epath.Path(gcs) / "arr" / "zarr.json").exists()


def test_tfds_data_source_from_gcs(gcs, data_root):
    """A prepared array_record dataset copied to gs:// reads with tfds.data_source (array_record's
    own GCS client: CLOUD_STORAGE_EMULATOR_ENDPOINT)."""
    import fsspec
    import tensorflow_datasets as tfds

    from phd_jax.data import shakespeare  # noqa: F401  (registers the builder)

    fs = fsspec.filesystem("gs")  # not gcsfs.GCSFileSystem: imported first, it is the Extended one
    fs.put(data_root["tfds"].rstrip("/") + "/", f"{gcs}/tfds/", recursive=True)
    local = tfds.data_source("shakespeare_corpus", split="train", data_dir=data_root["tfds"], download=False)
    remote = tfds.data_source("shakespeare_corpus", split="train", data_dir=f"{gcs}/tfds", download=False)
    assert len(remote) == len(local) > 0
    assert remote[0]["text"] == local[0]["text"] and remote[len(local) - 1]["id"] == local[len(local) - 1]["id"]


def test_settings_end_with_the_fixture(gcs_emulator):
    """After a `gcs` test (this one runs last in the file) nothing points at the emulator any more."""
    import fsspec

    assert not set(gcs_emulator.env) & set(os.environ)
    assert fsspec.config.conf.get("gs", {}).get("token") != "anon"
