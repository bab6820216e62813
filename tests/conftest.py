"""Test setup: eight fake CPU devices (for sharding tests), fast compiles, float32 matmuls,
and JAX's persistent compilation cache (subprocesses inherit it through the environment)."""
import os

# Tiny test models spend their time compiling, not running: skip LLVM's heavy passes.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                                   "--xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.expanduser("~/.cache/phd_jax/jax_cache_tests"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "float32")
