"""Analytic FLOP counts against the dense mask, the parameter shapes and XLA's own count."""

import tracemalloc

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import VARIANT_GRID, tiny_config

from phd_jax import ModelConfig, attention_mask, forward, init_params
from phd_jax.flops import attention_pairs, forward_flops, peak_flops, train_flops_per_sequence


def _grid():
    for variant in ("vanilla", "naive", "phd", "phd_swa", "phd_cswa"):
        for k in (1,) if variant == "vanilla" else (1, 2, 3, 4):
            windows = (0, 1, 2, 3, 5, 50) if variant in ("phd_swa", "phd_cswa") else (0,)
            chunks = (1, 2, 3, 7, 40) if variant == "phd_cswa" else (None,)
            for w in windows:
                for c in chunks:
                    yield variant, k, w, c


def test_attention_pairs_equal_dense_mask_count():
    cases = 0
    for variant, k, w, c in _grid():
        cfg = ModelConfig(variant=variant, repeat=k, window=w, chunk=c)
        for t in (1, 2, 3, 5, 8, 13):
            dense = attention_mask(variant, t, k, cfg.effective_window, cfg.effective_chunk)
            assert attention_pairs(cfg, t) == int(dense.sum()), (cfg.name, t)
            cases += 1
    assert cases > 500


def test_attention_pairs_long_context_without_dense_mask():
    cfg = ModelConfig(variant="phd_cswa", repeat=4, window=16, chunk=32, max_seq_len=32768)
    tracemalloc.start()
    pairs = attention_pairs(cfg, 32768)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50e6  # the dense mask would be 17 GB
    # Closed form: K*T(T+1)/2 original keys; the hidden keys repeat chunk by chunk (the
    # window never crosses a chunk), so count one chunk of (K-1)*C hidden queries, T/C times.
    t, k, w, c = 32768, 4, 16, 32
    h = np.arange(c * (k - 1))  # hidden order within one chunk
    own = (h // (k - 1)) * (k - 1)
    per_chunk = (h - np.minimum(own, np.maximum(h - w, 0)) + 1).sum()
    assert pairs == k * t * (t + 1) // 2 + (t // c) * int(per_chunk)


def test_vanilla_forward_flops_equal_parameter_shapes():
    """Layers: 2 FLOPs per weight per token over every kernel of the layers; unembedding:
    2 per embedding weight per position; attention: 4*head_dim*heads per causal pair."""
    cfg = tiny_config("vanilla", repeat=1, scan_layers=False)
    params = jax.eval_shape(lambda: init_params(cfg, 0))
    t = 24
    kernels = [
        leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
        if "layers_" in jax.tree_util.keystr(path) and "kernel" in jax.tree_util.keystr(path)
    ]
    assert len(kernels) == cfg.num_layers * 7
    f = forward_flops(cfg, t)
    assert f["layers"] == sum(2 * t * np.prod(x.shape) for x in kernels)
    assert f["unembed"] == 2 * t * np.prod(params["embed"]["embedding"].shape)
    assert f["attention"] == cfg.num_layers * 4 * cfg.head_dim * cfg.num_heads * t * (t + 1) // 2
    assert f["total"] == f["layers"] + f["attention"] + f["unembed"]
    assert train_flops_per_sequence(cfg, t) == 3 * f["total"]


@pytest.mark.parametrize("name", ["vanilla", "naive-3", "PHD-3"])
def test_forward_flops_match_xla_cost_analysis(name):
    """XLA counts every dot of the dense backend (which computes all N^2 scores) plus a
    little elementwise work: our count, with dense pairs, must agree within 3%."""
    kw = dict(
        vocab_size=512,
        num_layers=2,
        d_model=128,
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
        mlp_dim=384,
        max_seq_len=64,
        attention="dense",
        scan_layers=False,
    )
    cfg = ModelConfig(**VARIANT_GRID[name], **kw)
    t = 64
    params = jax.eval_shape(lambda: init_params(cfg, 0))
    tokens = jax.ShapeDtypeStruct((1, t), jnp.int32)
    xla = jax.jit(forward, static_argnums=1).lower(params, cfg, tokens).cost_analysis()["flops"]
    f = forward_flops(cfg, t)
    n = t * cfg.repeat
    dense_scores = cfg.num_layers * 4 * cfg.head_dim * cfg.num_heads * n * n
    ours = f["layers"] + f["unembed"] + dense_scores
    assert ours == pytest.approx(xla, rel=0.03)
    assert ours <= xla  # XLA adds elementwise FLOPs only


def test_k_copies_scale_layer_flops():
    base = forward_flops(tiny_config("vanilla", repeat=1), 32)
    for k in (2, 3, 4):
        for variant, extra in (
            ("phd", {}),
            ("phd_swa", dict(window=4)),
            ("phd_cswa", dict(window=4, chunk=8)),
            ("naive", {}),
        ):
            f = forward_flops(tiny_config(variant, repeat=k, **extra), 32)
            assert f["layers"] == k * base["layers"]
            assert f["unembed"] == base["unembed"]  # only the last copy has logits
            assert base["attention"] < f["attention"]
    # More window, more pairs; chunking cuts some; phd is the floor.
    pairs = [
        attention_pairs(tiny_config(v, repeat=3, **kw), 32)
        for v, kw in (
            ("phd", {}),
            ("phd_cswa", dict(window=4, chunk=4)),
            ("phd_swa", dict(window=4)),
            ("phd_swa", dict(window=16)),
        )
    ]
    assert pairs == sorted(pairs) and len(set(pairs)) == 4


def test_peak_flops():
    assert peak_flops(2.5) == 2.5e12
    measured = peak_flops()
    assert measured > 1e8 and peak_flops(None) == measured  # cached per process
    with pytest.raises(ValueError, match="peak_tflops=-1"):
        peak_flops(-1)
    with pytest.raises(ValueError, match="dtype='int8'"):
        peak_flops(dtype="int8")
