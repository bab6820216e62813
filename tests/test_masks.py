"""The mask against a literal reading of docs/spec.md section 3, and its block-sparse patterns."""

import itertools

import numpy as np
import pytest
from helpers import check_kernel_coverage

from phd_jax.attention.tables import tile_tables
from phd_jax.config import VARIANTS, ModelConfig
from phd_jax.masks import EMPTY, FULL, PARTIAL, BlockPattern, Layout, attention_mask


def spec_mask(variant, T, K, W, C):
    """Brute force, one (query, key) pair at a time, in the spec's own words."""
    n_tok = T * K
    out = np.zeros((n_tok, n_tok), bool)
    for qi, ki in itertools.product(range(n_tok), repeat=2):
        n, s = divmod(qi, K)
        m, r = divmod(ki, K)
        if variant == "naive":
            out[qi, ki] = m * K + r <= n * K + s
            continue
        rule1 = r == 0 and m <= n
        if variant == "vanilla" or K == 1:
            out[qi, ki] = rule1
            continue
        rule2 = m == n and 1 <= r <= s
        rule3 = False
        if variant in ("phd_swa", "phd_cswa") and W >= 1 and s >= 1 and r >= 1:
            h_q, h_k = n * (K - 1) + (s - 1), m * (K - 1) + (r - 1)
            rule3 = h_q - W <= h_k <= h_q
            if variant == "phd_cswa" and C is not None:
                rule3 = rule3 and (m // C == n // C)
        out[qi, ki] = rule1 or rule2 or rule3
    return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_attention_mask_equals_brute_force_on_grid(variant):
    for T, K, W, C in itertools.product(range(1, 10), range(1, 6), range(8), [1, 2, 3, 4, None]):
        got = attention_mask(variant, T, K, window=W, chunk=C)
        assert got.shape == (T * K, T * K) and got.dtype == bool
        np.testing.assert_array_equal(got, spec_mask(variant, T, K, W, C), err_msg=f"{variant} T={T} K={K} W={W} C={C}")


def test_worked_example_from_spec():
    rows = """
        1 . . . . . . . .
        1 1 . . . . . . .
        1 1 1 . . . . . .
        1 . . 1 . . . . .
        1 . . 1 1 . . . .
        1 . . 1 1 1 . . .
        1 . . 1 . . 1 . .
        1 . . 1 . . 1 1 .
        1 . . 1 . . 1 1 1"""
    expected = np.array([[c == "1" for c in line.split()] for line in rows.strip().splitlines()])
    np.testing.assert_array_equal(attention_mask("phd", 3, 3), expected)


@pytest.mark.parametrize("T,K,W,C", [(7, 3, 4, 2), (9, 4, 2, 3), (5, 2, 0, 1), (6, 5, 7, 4)])
def test_spec_consequences(T, K, W, C):
    phd = attention_mask("phd", T, K)
    # Original tokens attend only to original tokens (vanilla stream).
    for v in ("phd", "phd_swa", "phd_cswa"):
        m = attention_mask(v, T, K, W, C)
        orig = np.arange(T * K) % K == 0
        assert not m[np.ix_(orig, ~orig)].any()
        np.testing.assert_array_equal(m[np.ix_(orig, orig)], np.tril(np.ones((T, T), bool)))
    np.testing.assert_array_equal(attention_mask("phd_swa", T, K, 0), phd)
    np.testing.assert_array_equal(attention_mask("phd_cswa", T, K, 0, C), phd)
    np.testing.assert_array_equal(attention_mask("phd_cswa", T, K, W, T), attention_mask("phd_swa", T, K, W))
    for v in VARIANTS:
        np.testing.assert_array_equal(attention_mask(v, T, 1, W, C), np.tril(np.ones((T, T), bool)))


@pytest.mark.parametrize(
    "args,field",
    [
        (("bogus", 3, 2), "variant"),
        (("phd", 0, 2), "seq_len"),
        (("phd", 3, 0), "repeat"),
        (("phd_swa", 3, 2, -1), "window"),
        (("phd_cswa", 3, 2, 1, 0), "chunk"),
    ],
)
def test_attention_mask_rejects_bad_arguments(args, field):
    with pytest.raises(ValueError, match=field):
        attention_mask(*args)


LAYOUT_CASES = [
    ("vanilla", 1, 0, None),
    ("naive", 3, 0, None),
    ("phd", 3, 0, None),
    ("phd_swa", 3, 4, None),
    ("phd_cswa", 4, 5, 3),
    ("phd", 1, 0, None),
]


@pytest.mark.parametrize("variant,K,W,C", LAYOUT_CASES)
def test_layouts_are_permutations_of_the_paper_mask(variant, K, W, C):
    cfg = ModelConfig(variant=variant, repeat=K, window=W, chunk=C)
    T = 11
    paper = attention_mask(variant, T, K, W, C)
    for kind in ("paper", "kernel"):
        lay = Layout.for_config(cfg, T, kind)
        perm = lay.permutation
        assert sorted(perm) == list(range(T * K))
        np.testing.assert_array_equal(lay.mask, paper[np.ix_(perm, perm)])
        pos, copy = lay.tokens
        np.testing.assert_array_equal(pos[lay.logit_rows], np.arange(T))
        assert (copy[lay.logit_rows] == K - 1).all()
    kernel = Layout.for_config(cfg, T, "kernel")
    if variant not in ("vanilla", "naive") and K > 1:  # [originals | hidden in hidden order]
        pos, copy = kernel.tokens
        assert (copy[:T] == 0).all() and (copy[T:] > 0).all()
        hidx = pos[T:] * (K - 1) + copy[T:] - 1
        np.testing.assert_array_equal(hidx, np.arange(T * (K - 1)))
    orig = Layout.for_config(cfg, T, "originals")
    np.testing.assert_array_equal(orig.mask, np.tril(np.ones((T, T), bool)))
    # Prefill's token sets: the kernel layout without the hidden tokens of early positions.
    for start in (1, 5, T - 1):
        lay = Layout.for_config(cfg, T, "kernel", hidden_from=start)
        pos, copy = lay.tokens
        if variant == "naive":  # every copy is an input of its cache: nothing is dropped
            assert lay.size == T * K
        else:
            assert ((copy == 0) | (pos >= start)).all()
            assert lay.size == T + (T - start) * (K - 1)
        np.testing.assert_array_equal(lay.mask, paper[np.ix_(lay.permutation, lay.permutation)])


def _check_pattern(mask, pattern: BlockPattern):
    bq, bk = pattern.block_q, pattern.block_kv
    nq, nk = pattern.block_mask.shape
    # Tile classification against the tiles themselves.
    for i, j in itertools.product(range(nq), range(nk)):
        tile = mask[i * bq : (i + 1) * bq, j * bk : (j + 1) * bk]
        want = FULL if tile.all() else PARTIAL if tile.any() else EMPTY
        assert pattern.block_mask[i, j] == want
    # The kernel's tiles (plus the band) cover exactly the allowed pairs; full tiles need no mask.
    check_kernel_coverage(mask, pattern)


@pytest.mark.parametrize("variant,K,W,C", LAYOUT_CASES + [("phd_swa", 4, 16, None), ("phd_cswa", 2, 3, 5)])
@pytest.mark.parametrize("T,bq,bk", [(37, 16, 16), (64, 32, 16), (9, 128, 128)])
def test_block_pattern_is_exact(variant, K, W, C, T, bq, bk):
    cfg = ModelConfig(variant=variant, repeat=K, window=W, chunk=C)
    for kind, start in (("paper", 0), ("kernel", 0), ("originals", 0), ("kernel", T - 3)):
        lay = Layout.for_config(cfg, T, kind, hidden_from=start)
        _check_pattern(lay.mask, lay.pattern(bq, bk))


def test_kernel_layout_is_sparse_and_band_is_found():
    cfg = ModelConfig.from_name("PHD-SWA-4-16-inf")
    T = 1024
    kernel = Layout.for_config(cfg, T, "kernel").pattern(128, 128)
    paper = Layout.for_config(cfg, T, "paper").pattern(128, 128)
    vanilla = Layout.for_config(ModelConfig(), T, "kernel").pattern(128, 128)
    (band,) = [st.band for st in tile_tables(kernel).stacks if st.band is not None]
    assert kernel.layout.band_start == T and band.reach == 16  # the window W
    # The regrouping is what makes PHD cheap: far fewer tiles than the interleaved layout.
    assert kernel.num_nonempty < 0.4 * paper.num_nonempty
    # About K times the attention work of vanilla (4.5x in tiles at this size, 4x in pairs).
    assert 4 * vanilla.num_nonempty <= kernel.num_nonempty <= 6 * vanilla.num_nonempty
    assert kernel.nonempty_fraction == kernel.num_nonempty / kernel.num_blocks
