"""Document masking (docs/spec.md section 3, packed documents): a token's logits do not change when
another document of the same window changes, and equal those of its document run alone, for
every variant, with the dense reference and the block-sparse kernel."""

import jax
import numpy as np
import pytest
from helpers import VARIANT_GRID, max_diff, tiny_config

from phd_jax import forward, init_params
from phd_jax.attention import dense_attention, splash_attention
from phd_jax.masks import Layout, attention_mask, segment_allowed
from phd_jax.model import segment_positions

LENGTHS = (5, 4, 6)  # documents start at 0, 5, 9: off the chunk grid of C = 2 and 3
T = sum(LENGTHS)
STARTS = np.cumsum((0,) + LENGTHS[:-1])
SEGMENTS = np.repeat(np.arange(len(LENGTHS)) + 7, LENGTHS)[None].astype(np.int32)  # any ids work


def test_segment_positions():
    seg = np.array([[3, 3, 3, 1, 1, 3, 3], [0, 0, 0, 0, 0, 0, 0]])
    doc, off = segment_positions(seg)
    np.testing.assert_array_equal(doc, [[0, 0, 0, 1, 1, 2, 2], [0] * 7])  # runs, not ids
    np.testing.assert_array_equal(off, [[0, 1, 2, 0, 1, 0, 1], list(range(7))])


def test_document_rule_is_the_spec_per_document():
    """`segment_allowed` on the packed sequence = the spec's mask of each document alone."""
    for name, kw in VARIANT_GRID.items():
        cfg = tiny_config(**kw)
        K = cfg.repeat
        doc, off = (np.asarray(x)[0] for x in segment_positions(SEGMENTS))
        i = np.arange(T * K)
        pos, copy = i // K, i % K
        mask = segment_allowed(
            cfg.variant,
            off[pos][:, None],
            copy[:, None],
            doc[pos][:, None],
            off[pos][None],
            copy[None],
            doc[pos][None],
            K,
            cfg.effective_window,
            cfg.effective_chunk,
        )
        expected = np.zeros_like(mask)
        for s, n in zip(STARTS, LENGTHS):
            block = slice(s * K, (s + n) * K)
            expected[block, block] = attention_mask(cfg.variant, n, K, cfg.effective_window, cfg.effective_chunk)
        np.testing.assert_array_equal(mask, expected, err_msg=name)


@pytest.mark.parametrize("name", list(VARIANT_GRID))
def test_documents_do_not_see_each_other(name):
    kw = dict(VARIANT_GRID[name], num_layers=2, max_seq_len=T, block_q=8, block_kv=8)
    dense, sparse = tiny_config(**kw, attention="dense"), tiny_config(**kw, attention="blocksparse")
    params = init_params(dense, 0)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, dense.vocab_size, (1, T)).astype(np.int32)
    changed = tokens.copy()  # documents 0 and 2 replaced, document 1 kept
    changed[0, :5] = rng.integers(0, dense.vocab_size, 5)
    changed[0, 9:] = rng.integers(0, dense.vocab_size, 6)
    batch, segs = np.concatenate([tokens, changed]), np.repeat(SEGMENTS, 2, axis=0)
    alone = rng.integers(0, dense.vocab_size, (3, T)).astype(np.int32)  # doc j first, then filler
    for j, (s, n) in enumerate(zip(STARTS, LENGTHS)):
        alone[j, :n] = tokens[0, s : s + n]
    ref = jax.jit(forward, static_argnums=1)(params, dense, alone)  # causal: filler comes after
    for cfg in (dense, sparse):
        out = jax.jit(forward, static_argnums=1)(params, cfg, batch, segs)
        assert max_diff(out[0, 5:9], out[1, 5:9]) <= 1e-5, cfg.attention
        for j, (s, n) in enumerate(zip(STARTS, LENGTHS)):
            assert max_diff(out[0, s : s + n], ref[j, :n]) <= 1e-4, (cfg.attention, j)
        assert max_diff(out[1, 5:9], out[0, 5:9]) <= 1e-5


def test_splash_with_segment_ids_and_its_limits():
    """Splash uses SegmentIds where the static mask is right per document (no chunks), and
    refuses phd_cswa's chunks, which count from each document's start."""
    cfg = tiny_config("phd_swa", repeat=2, window=3, attention="dense")
    lay = Layout.for_config(cfg, T, "kernel")
    pos, copy = lay.tokens
    doc, off = (np.asarray(x)[0] for x in segment_positions(SEGMENTS))
    mask = segment_allowed(
        cfg.variant,
        off[pos][:, None],
        copy[:, None],
        doc[pos][:, None],
        off[pos][None],
        copy[None],
        doc[pos][None],
        2,
        3,
    )
    ks = jax.random.split(jax.random.key(0), 3)
    n = lay.size
    q = jax.random.normal(ks[0], (1, n, 4, 16))
    k, v = (jax.random.normal(x, (1, n, 2, 16)) for x in ks[1:])
    out = splash_attention(q, k, v, lay.pattern(128, 128), interpret=True, segment_ids=doc[pos][None])
    assert max_diff(out, dense_attention(q, k, v, mask)) <= 1e-5

    cswa = tiny_config("phd_cswa", repeat=2, window=3, chunk=2, attention="splash", block_q=128, block_kv=128)
    with pytest.raises(ValueError, match="attention='splash' with segment_ids cannot count PHD-CSWA-2-3-2's chunks"):
        forward(init_params(cswa, 0), cswa, np.zeros((1, T), np.int32), SEGMENTS)
    with pytest.raises(ValueError, match=r"segment_ids must be integers of the tokens' shape \(1, 15\)"):
        forward(init_params(cswa, 0), cswa, np.zeros((1, T), np.int32), SEGMENTS[:, :-1])


@pytest.mark.parametrize("name", ["naive-2", "PHD-CSWA-3-4-3"])
def test_blocksparse_document_mask_gradients_equal_dense(name):
    """Training differentiates through the run-time mask: gradients match the dense reference."""
    import jax.numpy as jnp

    from phd_jax.attention import blocksparse_attention, segment_mask, static_config

    cfg = tiny_config(**VARIANT_GRID[name])
    lay = Layout.for_config(static_config(cfg, True), T, "kernel")  # PHD-SWA's pattern for CSWA
    pos, _ = lay.tokens
    doc, off = (np.asarray(x)[:, pos] for x in segment_positions(np.repeat(SEGMENTS, 2, axis=0)))
    rule = segment_mask(cfg, lay, (jnp.asarray(doc), jnp.asarray(off)))
    n = np.arange(lay.size)
    ks = jax.random.split(jax.random.key(1), 4)
    q, ct = (jax.random.normal(x, (2, lay.size, 4, 16)) for x in ks[:2])
    k, v = (jax.random.normal(x, (2, lay.size, 2, 16)) for x in ks[2:])

    def grads(attn):
        f = lambda q, k, v: jnp.vdot(attn(q, k, v), ct)  # noqa: E731
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))(q, k, v)

    ref = grads(lambda q, k, v: dense_attention(q, k, v, rule(n[:, None], n[None, :])))
    out = grads(lambda q, k, v: blocksparse_attention(q, k, v, lay.pattern(8, 8), rule))
    assert max_diff(out[0], ref[0]) <= 1e-4 and max_diff(out[1], ref[1]) <= 1e-4
