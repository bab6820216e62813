"""Test setup: eight fake CPU devices (for sharding tests), fast compiles, float32 matmuls,
and JAX's persistent compilation cache (subprocesses inherit it through the environment)."""

import os

# Tiny test models spend their time compiling, not running: skip LLVM's heavy passes.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.expanduser("~/.cache/phd_jax/jax_cache_tests"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "float32")

import gc  # noqa: E402

import pytest  # noqa: E402
from data_helpers import data_root  # noqa: E402, F401  (a session fixture for every data test)
from gcs_emulator import gcs, gcs_emulator  # noqa: E402, F401  (a local GCS: tests/gcs_emulator.py)


@pytest.fixture(autouse=True, scope="module")
def _release_executables():
    """Drop each test module's compiled executables when it ends. XLA:CPU maps every JIT-compiled
    function into memory; one process running the whole suite would otherwise keep thousands of
    them and reach the kernel's limit on memory mappings (`vm.max_map_count`, 65530), where LLVM
    fails with "Cannot allocate memory". The persistent compilation cache makes a later
    recompile cheap."""
    yield
    jax.clear_caches()
    gc.collect()


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """A tiny train.py run (tests/train_runs.py), shared by test_train_resume and test_gcs."""
    from train_runs import train

    wd = str(tmp_path_factory.mktemp("reference") / "run")
    out = train(wd, "--config.sample_tokens=16")
    assert out.returncode == 0, out.stderr[-3000:]
    return wd, out.stdout
