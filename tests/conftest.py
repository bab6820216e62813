"""Test setup: eight fake CPU devices (for sharding tests), fast compiles, float32 matmuls."""
import os

# Tiny test models spend their time compiling, not running: skip LLVM's heavy passes.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                                   "--xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "float32")
