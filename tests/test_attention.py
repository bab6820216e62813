"""Every attention backend equals the dense reference, forward and gradients."""

import jax
import jax.numpy as jnp
import pytest
from helpers import attention_inputs as _inputs
from helpers import compare_attention_to_dense as _compare_to_dense
from helpers import max_diff

from phd_jax import ModelConfig
from phd_jax.attention import blocksparse_attention, dense_attention, resolve_backend, splash_attention
from phd_jax.masks import Layout

CASES = [  # (variant, K, W, C): every variant, K in {1, 2, 3}
    ("vanilla", 1, 0, None),
    ("naive", 2, 0, None),
    ("naive", 3, 0, None),
    ("phd", 1, 0, None),
    ("phd", 2, 0, None),
    ("phd", 3, 0, None),
    ("phd_swa", 2, 3, None),
    ("phd_swa", 3, 5, None),
    ("phd_swa", 3, 0, None),
    ("phd_cswa", 2, 3, 4),
    ("phd_cswa", 3, 5, 3),
    ("phd_cswa", 1, 2, 2),
]


@pytest.mark.parametrize("variant,K,W,C", CASES)
@pytest.mark.parametrize("T,bq,bk", [(13, 16, 16), (21, 8, 16), (40, 32, 16)])
def test_blocksparse_equals_dense(variant, K, W, C, T, bq, bk):
    cfg = ModelConfig(variant=variant, repeat=K, window=W, chunk=C)
    _compare_to_dense(cfg, T, lambda q, k, v, lay: blocksparse_attention(q, k, v, lay.pattern(bq, bk)))


@pytest.mark.parametrize("variant,K,W,C", [c for c in CASES if c[1] > 1 or c[0] == "vanilla"])
def test_splash_equals_dense(variant, K, W, C):
    """The TPU kernel in Pallas interpret mode, tiles of 128, a sequence that needs padding."""
    cfg = ModelConfig(variant=variant, repeat=K, window=W, chunk=C)
    T = 150 // K
    _compare_to_dense(cfg, T, lambda q, k, v, lay: splash_attention(q, k, v, lay.pattern(128, 128), interpret=True))


def test_splash_rejects_small_tiles():
    cfg = ModelConfig(variant="phd", repeat=2)
    lay = Layout.for_config(cfg, 8, "kernel")
    q, k, v, _ = _inputs(lay.size)
    with pytest.raises(ValueError, match="multiples of 128, got block_q=64, block_kv=128"):
        splash_attention(q, k, v, lay.pattern(64, 128), interpret=True)


def test_auto_backend_per_platform():
    assert resolve_backend("auto") == ("splash" if jax.default_backend() == "tpu" else "blocksparse")
    assert resolve_backend("dense") == "dense"


def test_bfloat16_inputs_stay_close():
    cfg = ModelConfig(variant="phd_swa", repeat=3, window=4)
    lay = Layout.for_config(cfg, 20, "kernel")
    q, k, v, _ = _inputs(lay.size)
    ref = dense_attention(q, k, v, lay.mask)
    bf = blocksparse_attention(*(x.astype(jnp.bfloat16) for x in (q, k, v)), lay.pattern(16, 16))
    assert bf.dtype == jnp.bfloat16
    assert max_diff(bf.astype(jnp.float32), ref) < 0.05


def test_splash_loads_only_when_used():
    """A CPU/GPU program (model, decode, the blocksparse backend) never imports splash's modules;
    `phd_jax.attention.splash_attention` still resolves, on first use."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = (
        "import sys, phd_jax.model, phd_jax.decode, phd_jax.attention as a; "
        "print(any('splash' in m for m in sys.modules)); a.splash_attention; "
        "print(any('splash' in m for m in sys.modules))"
    )
    env = dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, env=env, timeout=300)
    assert out.stdout.split() == ["False", "True"], out.stderr
