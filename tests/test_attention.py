"""Every attention backend equals the dense reference, forward and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phd_jax import ModelConfig
from phd_jax.attention import blocksparse_attention, dense_attention, resolve_backend, splash_attention
from phd_jax.masks import Layout
from helpers import max_diff

CASES = [  # (variant, K, W, C): every variant, K in {1, 2, 3}
    ("vanilla", 1, 0, None), ("naive", 2, 0, None), ("naive", 3, 0, None),
    ("phd", 1, 0, None), ("phd", 2, 0, None), ("phd", 3, 0, None),
    ("phd_swa", 2, 3, None), ("phd_swa", 3, 5, None), ("phd_swa", 3, 0, None),
    ("phd_cswa", 2, 3, 4), ("phd_cswa", 3, 5, 3), ("phd_cswa", 1, 2, 2),
]
HEADS, KV_HEADS, HEAD_DIM = 4, 2, 16   # grouped-query attention


def _inputs(n, seed=0):
    ks = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(ks[0], (2, n, HEADS, HEAD_DIM))
    k = jax.random.normal(ks[1], (2, n, KV_HEADS, HEAD_DIM))
    v = jax.random.normal(ks[2], (2, n, KV_HEADS, HEAD_DIM))
    ct = jax.random.normal(ks[3], (2, n, HEADS, HEAD_DIM))
    return q, k, v, ct


def _value_and_grads(attn, q, k, v, ct):
    def loss(q, k, v):
        out = attn(q, k, v)
        return jnp.vdot(out, ct), out
    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return out, grads


def _compare_to_dense(cfg, T, kernel_attn):
    """Run `kernel_attn` in the kernel layout and dense in the paper layout; compare in paper order."""
    paper = Layout.for_config(cfg, T, "paper")
    kernel = Layout.for_config(cfg, T, "kernel")
    perm = kernel.permutation                   # kernel index -> paper index
    inv = np.argsort(perm)
    q, k, v, ct = _inputs(paper.size)
    out_ref, g_ref = _value_and_grads(lambda q, k, v: dense_attention(q, k, v, paper.mask), q, k, v, ct)
    to_kernel = lambda x: x[:, perm]  # noqa: E731
    out, g = _value_and_grads(lambda q, k, v: kernel_attn(q, k, v, kernel), *map(to_kernel, (q, k, v, ct)))
    out, g = out[:, inv], tuple(x[:, inv] for x in g)
    assert max_diff(out, out_ref) <= 1e-5
    assert max_diff(g, g_ref) <= 1e-4
    assert np.isfinite(np.asarray(out)).all()


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
    _compare_to_dense(cfg, T, lambda q, k, v, lay: splash_attention(q, k, v, lay.pattern(128, 128),
                                                                    interpret=True))


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
