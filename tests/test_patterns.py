"""Block patterns built per query block from `allowed` (no dense [N, N] mask) equal the
classification of the dense mask, at every size; splash gets a computable mask."""

import itertools
import time
import tracemalloc

import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask_lib
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask_info as splash_info

from benchmarks.common import pattern_from_mask, reference_pattern
from phd_jax.attention.splash import SplashPatternMask, splash_sizes
from phd_jax.attention.tables import tile_tables
from phd_jax.config import ModelConfig
from phd_jax.masks import EMPTY, PARTIAL, BlockPattern, Layout

# (variant, K, W, C): every variant, windows below / above K-1, chunks that cut the window.
VARIANT_CASES = [
    ("vanilla", 1, 0, None),
    ("naive", 3, 0, None),
    ("phd", 1, 0, None),
    ("phd", 2, 0, None),
    ("phd", 4, 0, None),
    ("phd_swa", 3, 0, None),
    ("phd_swa", 2, 1, None),
    ("phd_swa", 3, 4, None),
    ("phd_swa", 4, 16, None),
    ("phd_cswa", 2, 3, 5),
    ("phd_cswa", 3, 7, 2),
    ("phd_cswa", 4, 5, 3),
    ("phd_cswa", 3, 4, 1),
]
TILES = [(8, 8), (16, 16), (8, 32), (32, 16), (24, 40), (128, 128)]


def _layouts(cfg, T):
    yield Layout.for_config(cfg, T, "originals")
    yield Layout.for_config(cfg, T, "paper")  # PHD: the strip fallback
    for start in sorted({0, 1, T // 2, T - 1, T}):  # prefill's token sets
        yield Layout.for_config(cfg, T, "kernel", hidden_from=start)


def assert_same_pattern(got: BlockPattern, want: BlockPattern):
    assert got.shape == want.shape
    assert (got.block_q, got.block_kv) == (want.block_q, want.block_kv)
    np.testing.assert_array_equal(got.block_mask, want.block_mask)
    assert got.block_mask.dtype == want.block_mask.dtype
    assert got.num_nonempty == want.num_nonempty and got.nonempty_fraction == want.nonempty_fraction


@pytest.mark.parametrize("variant,K,W,C", VARIANT_CASES)
def test_builder_equals_dense_classification(variant, K, W, C):
    cfg = ModelConfig(variant=variant, repeat=K, window=W, chunk=C)
    bands = 0
    for T in (1, 2, 7, 13, 37, 64):
        for lay in _layouts(cfg, T):
            for bq, bk in TILES:
                got = BlockPattern.from_layout(lay, bq, bk)
                want = reference_pattern(lay, bq, bk)
                assert_same_pattern(got, want)
                bands += any(st.band is not None for st in tile_tables(got).stacks)
                # Partial tiles read their masks from `allowed`: equal to the dense mask's.
                for i, j in zip(*np.nonzero(got.block_mask == PARTIAL)):
                    q0, q1 = i * bq, min((i + 1) * bq, lay.size)
                    k0, k1 = j * bk, min((j + 1) * bk, lay.size)
                    np.testing.assert_array_equal(got.tile_mask(q0, q1, k0, k1), lay.mask[q0:q1, k0:k1])
    assert bands > 0 or K == 1 or variant in ("vanilla", "naive")  # the band path is exercised


@pytest.mark.parametrize("variant,K,W,C", VARIANT_CASES)
def test_spans_and_tokens_are_closed_forms_of_allowed(variant, K, W, C):
    cfg = ModelConfig(variant=variant, repeat=K, window=W, chunk=C)
    for T in (1, 5, 19):
        for lay in _layouts(cfg, T):
            pos, copy = lay.token_at(np.arange(lay.size))
            np.testing.assert_array_equal(pos, lay.tokens[0])
            np.testing.assert_array_equal(copy, lay.tokens[1])
            spans = lay.spans()
            if spans is None:  # only the interleaved paper layout of a PHD model has none
                assert lay.kind == "paper" and variant not in ("vanilla", "naive") and K > 1
                continue
            a, b, c = spans
            col = np.arange(lay.size)
            rows = (col[None, :] < a[:, None]) | ((col >= b[:, None]) & (col < c[:, None]))
            np.testing.assert_array_equal(rows, lay.mask)


def test_kernel_path_never_builds_the_dense_mask():
    cfg = ModelConfig.from_name("PHD-CSWA-3-4-8")
    lay = Layout("kernel", cfg.variant, 50, cfg.repeat, cfg.effective_window, cfg.effective_chunk)
    pattern = lay.pattern(16, 16)
    tile_tables(pattern), pattern.tile_mask(16, 32, 0, 48)
    assert "mask" not in vars(lay) and "mask" not in vars(pattern)
    np.testing.assert_array_equal(pattern.mask, lay.mask)  # still there for tests, on request


# Closed form for the kernel layout, K = 4, tiles B = 128, T = 128 * nb, hidden_from = 0,
# phd / phd_swa (W = 16) / phd_cswa (W = 16, C = 32). Rows and columns: nb original blocks
# (index < T), then 3 * nb hidden blocks (hidden order h = 3n + s - 1).
# - Original row block i < nb sees the originals [0, n + 1): tiles 0..i -> i + 1 tiles,
#   sum nb (nb + 1) / 2. Originals never see hidden tokens.
# - Hidden row block i' = 3m + r (r = 0, 1, 2) holds h in [128 i', 128 i' + 128); its last
#   position is floor((128 i' + 127) / 3), so it sees original tiles
#   0..floor((128 i' + 127) / 384) = 0..m (128 r + 127 < 384): m + 1 tiles, for each r:
#   sum 3 nb (nb + 1) / 2.
# - Hidden row block i' sees hidden keys from its first row's lower end lo to its own last
#   row: its own tile, plus tile i' - 1 iff lo < 128 i' (W = 16 < 128 reaches no further).
#   The first row h = 128 i' is position n = floor(128 i' / 3), copy h - 3n + 1.
#   phd: lo = 3n (own copies) < h iff 128 i' = 2 i' (mod 3) != 0, i.e. i' % 3 != 0.
#   phd_swa: lo = max(h - 16, 0) < h for every i' >= 1.
#   phd_cswa: lo = min(3n, max(h - 16, 96 floor(n / 32))) = h only if 3n = h (i' % 3 == 0,
#   n = 128 m) and the chunk starts there (96 floor(128 m / 32) = 384 m = h): so as phd.
#   Hidden tiles: phd, phd_cswa: 3 nb + (3 nb - 1) - (nb - 1) = 5 nb; phd_swa: 6 nb - 1.
# Total: 2 nb (nb + 1) + 5 nb (phd, phd_cswa), 2 nb (nb + 1) + 6 nb - 1 (phd_swa).
def closed_form_nonempty(name: str, T: int) -> int:
    nb = T // 128
    return 2 * nb * (nb + 1) + (6 * nb - 1 if name.startswith("PHD-SWA") else 5 * nb)


LONG_NAMES = ["PHD-4", "PHD-SWA-4-16-inf", "PHD-CSWA-4-16-32"]


@pytest.mark.parametrize("name", LONG_NAMES)
def test_closed_form_count_at_small_size(name):
    """The derivation against the dense reference, where the dense mask is affordable."""
    for T in (128, 768):
        lay = Layout.for_config(ModelConfig.from_name(name), T, "kernel")
        assert reference_pattern(lay, 128, 128).num_nonempty == closed_form_nonempty(name, T)


@pytest.mark.parametrize("name", LONG_NAMES)
def test_long_context_pattern_without_dense_memory(name):
    """T = 32768, K = 4: N = 131072 tokens (a dense mask would be 16 GiB of booleans)."""
    T = 32768
    cfg = ModelConfig.from_name(name).replace(max_seq_len=T)
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        lay = Layout.for_config(cfg, T, "kernel")
        pattern = BlockPattern.from_layout(lay, 128, 128)  # what lay.pattern(128, 128) caches
        tables = tile_tables(pattern)  # what blocksparse loops over
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert pattern.shape == (4 * T, 4 * T) and pattern.block_mask.shape == (1024, 1024)
    assert pattern.num_nonempty == closed_form_nonempty(name, T)
    assert peak < 100 * 2**20, f"peak host memory {peak / 2**20:.0f} MiB"
    assert seconds < 30  # a loose bound (shared CI cores); benchmarks/patterns.py measures
    (band,) = [st.band for st in tables.stacks if st.band is not None]
    assert lay.band_start == T and band.reach == (0 if name == "PHD-4" else 16)  # the window W
    assert "mask" not in vars(lay)


def _padded_dense(lay: Layout, n_pad: int) -> np.ndarray:
    want = np.eye(n_pad, dtype=bool)
    want[: lay.size, : lay.size] = lay.mask
    return want


@pytest.mark.parametrize(
    "name,T,hidden_from",
    [
        ("PHD-CSWA-3-4-8", 150, 0),
        ("PHD-SWA-2-3-inf", 128, 0),
        ("PHD-SWA-3-5-inf", 100, 93),
        ("naive-2", 70, 0),
        ("vanilla", 300, 0),
    ],
)
def test_splash_mask_is_computed_from_allowed(name, T, hidden_from):
    cfg = ModelConfig.from_name(name)
    lay = Layout.for_config(cfg, T, "kernel", hidden_from=hidden_from)  # prefill's token sets too
    pattern = lay.pattern(128, 128)
    _, _, n_pad = splash_sizes(pattern)
    mask = SplashPatternMask(pattern, n_pad)
    assert isinstance(mask, splash_mask_lib._ComputableMask) and mask.shape == (n_pad, n_pad)
    want = _padded_dense(lay, n_pad)
    # Whole tiles (the fast path, uniform tiles answer any/all without a scan) and odd slices.
    for i, j in itertools.product(range(n_pad // 128), repeat=2):
        tile = mask[i * 128 : (i + 1) * 128, j * 128 : (j + 1) * 128]
        np.testing.assert_array_equal(tile, want[i * 128 : (i + 1) * 128, j * 128 : (j + 1) * 128])
        assert tile.any() == want[i * 128 : (i + 1) * 128, j * 128 : (j + 1) * 128].any()
        assert tile.all() == want[i * 128 : (i + 1) * 128, j * 128 : (j + 1) * 128].all()
    for q0, q1, k0, k1 in [(0, n_pad, 0, n_pad), (5, 77, 3, min(200, n_pad)), (n_pad - 9, n_pad, 0, n_pad)]:
        np.testing.assert_array_equal(mask[q0:q1, k0:k1], want[q0:q1, k0:k1])
    # In the kernel the same function runs on jax arrays.
    q, k = np.arange(n_pad)[:, None], np.arange(n_pad)[None, :]
    np.testing.assert_array_equal(np.asarray(mask.mask_function(jnp.asarray(q), jnp.asarray(k))), want)
    # Equal masks hash equal (splash caches its preprocessing by mask).
    assert mask == SplashPatternMask(lay.pattern(128, 128), n_pad)
    assert hash(mask) == hash(SplashPatternMask(lay.pattern(128, 128), n_pad))
    assert mask != SplashPatternMask(Layout.for_config(cfg, T + 1, "kernel").pattern(128, 128), n_pad)
    # Splash's preprocessing sees the same tiles as the pattern (no mask data: computed in-kernel).
    info, fn = splash_info.process_mask(splash_mask_lib.MultiHeadMask([mask]), (128, 128), shrink_grid=False)
    assert fn is not None and info.partial_mask_blocks is None
    nq = pattern.block_mask.shape[0]
    whole = pattern.block_mask[: lay.size // 128, : lay.size // 128]
    np.testing.assert_array_equal(info.block_mask[0][: whole.shape[0], : whole.shape[1]], whole)
    assert (info.block_mask[0] != EMPTY).sum() >= (pattern.block_mask[:nq] != EMPTY).sum()


def test_uniform_tiles_answer_only_for_themselves():
    lay = Layout.for_config(ModelConfig.from_name("PHD-2"), 128, "kernel")
    mask = SplashPatternMask(lay.pattern(128, 128), 256)
    empty = mask[0:128, 128:256]  # a whole empty tile: answers from its class
    assert type(empty).__name__ == "_UniformTile" and not empty.any() and not empty.all()
    assert (empty | True).all() and (empty[:5] | ~empty[:5]).all()  # derived arrays scan
    mixed = empty.copy()
    mixed[0, 0] = True
    assert mixed.any() and not mixed.all()


def test_splash_needs_a_layout_pattern():
    from phd_jax.attention import splash_attention

    pattern = pattern_from_mask(np.tril(np.ones((128, 128), bool)), 128, 128)
    x = jnp.zeros((1, 128, 2, 8))
    with pytest.raises(ValueError, match="pattern built from a Layout"):
        splash_attention(x, x, x, pattern, interpret=True)
