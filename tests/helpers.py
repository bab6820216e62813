"""Small models and comparison helpers shared by the tests."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np

from phd_jax import ModelConfig


def tiny_config(variant="phd", repeat=3, window=0, chunk=None, **kw) -> ModelConfig:
    """A 2-layer GQA model small enough to compile in a second or two."""
    base = dict(
        vocab_size=61,
        num_layers=2,
        d_model=32,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        mlp_dim=64,
        max_seq_len=64,
        block_q=16,
        block_kv=16,
        attention="blocksparse",
    )
    base.update(kw)
    return ModelConfig(variant=variant, repeat=repeat, window=window, chunk=chunk, **base)


def named_config(name: str, **kw) -> ModelConfig:
    """A paper-named variant (`PHD-CSWA-3-4-3`) with the tiny model's dimensions."""
    dims = (
        "vocab_size",
        "num_layers",
        "d_model",
        "num_heads",
        "num_kv_heads",
        "head_dim",
        "mlp_dim",
        "max_seq_len",
        "block_q",
        "block_kv",
        "attention",
    )
    base = tiny_config()
    return ModelConfig.from_name(name, **{**{k: getattr(base, k) for k in dims}, **kw})


def random_tokens(config, batch, length, seed=0):
    return jax.random.randint(jax.random.key(seed), (batch, length), 0, config.vocab_size, dtype=jnp.int32)


def max_diff(a, b) -> float:
    leaves = zip(jax.tree.leaves(a), jax.tree.leaves(b))
    return max(
        (float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)), initial=0)) for x, y in leaves),
        default=0.0,
    )


# Every distinct variant the spec names, with small K / W / C (name -> kwargs).
VARIANT_GRID = {
    "vanilla": dict(variant="vanilla", repeat=1),
    "naive-2": dict(variant="naive", repeat=2),
    "naive-3": dict(variant="naive", repeat=3),
    "PHD-2": dict(variant="phd", repeat=2),
    "PHD-3": dict(variant="phd", repeat=3),
    "PHD-SWA-2-1-inf": dict(variant="phd_swa", repeat=2, window=1),
    "PHD-SWA-3-4-inf": dict(variant="phd_swa", repeat=3, window=4),
    "PHD-CSWA-2-4-2": dict(variant="phd_cswa", repeat=2, window=4, chunk=2),
    "PHD-CSWA-3-1-3": dict(variant="phd_cswa", repeat=3, window=1, chunk=3),
    "PHD-CSWA-3-4-3": dict(variant="phd_cswa", repeat=3, window=4, chunk=3),
}


ATTN_HEADS, ATTN_KV_HEADS, ATTN_HEAD_DIM = 4, 2, 16  # grouped-query attention in kernel tests


def attention_inputs(n, seed=0, batch=2):
    """q, k, v and an output cotangent `[batch, n, heads, head_dim]` for attention tests."""
    ks = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(ks[0], (batch, n, ATTN_HEADS, ATTN_HEAD_DIM))
    k = jax.random.normal(ks[1], (batch, n, ATTN_KV_HEADS, ATTN_HEAD_DIM))
    v = jax.random.normal(ks[2], (batch, n, ATTN_KV_HEADS, ATTN_HEAD_DIM))
    ct = jax.random.normal(ks[3], (batch, n, ATTN_HEADS, ATTN_HEAD_DIM))
    return q, k, v, ct


def attention_value_and_grads(attn, q, k, v, ct):
    """`(attn(q, k, v), (dq, dk, dv))` of the loss <attn(q, k, v), ct>, jitted."""

    def loss(q, k, v):
        out = attn(q, k, v)
        return jnp.vdot(out.astype(jnp.float32), ct), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return out, grads


def compare_attention_to_dense(cfg, T, kernel_attn, dtype=jnp.float32, tol=(1e-5, 1e-4)):
    """Run `kernel_attn(q, k, v, layout)` in the kernel layout (inputs cast to `dtype`) and the
    dense reference in the paper layout (float32); compare output and gradients in paper order."""
    from phd_jax.attention import dense_attention
    from phd_jax.masks import Layout

    paper = Layout.for_config(cfg, T, "paper")
    kernel = Layout.for_config(cfg, T, "kernel")
    perm = kernel.permutation  # kernel index -> paper index
    inv = np.argsort(perm)
    q, k, v, ct = attention_inputs(paper.size)
    out_ref, g_ref = attention_value_and_grads(lambda q, k, v: dense_attention(q, k, v, paper.mask), q, k, v, ct)
    to_kernel = lambda x: x[:, perm]  # noqa: E731
    cast = lambda x: to_kernel(x).astype(dtype)  # noqa: E731
    out, g = attention_value_and_grads(
        lambda q, k, v: kernel_attn(q, k, v, kernel), cast(q), cast(k), cast(v), to_kernel(ct)
    )
    out, g = out[:, inv], tuple(x[:, inv] for x in g)
    assert out.dtype == dtype and all(x.dtype == dtype for x in g)
    assert np.isfinite(np.asarray(out, np.float32)).all()
    assert max_diff(out, out_ref) <= tol[0]
    assert max_diff(g, g_ref) <= tol[1]


def state_for_comparison(cfg, state):
    """The parts of a decode state that can still influence future tokens.

    Cache slots at or beyond `pos` and window entries from another chunk than the
    next position's (phd_cswa) are never attended again, so they are zeroed.
    """
    cc, cache = cfg.cached_copies, state.cache
    live = jnp.arange(cache.k.shape[3])[None, :] < (state.pos * cc)[:, None]  # [B, S]
    zero_dead = lambda x, m: jnp.where(m[None, :, None, :, None], x, 0)  # noqa: E731
    h = state.window_hidx
    wlive = h >= 0
    if cfg.effective_chunk is not None and h.size:
        wlive &= (h // (cfg.repeat - 1)) // cfg.chunk == (state.pos // cfg.chunk)[:, None]
    return state.replace(
        cache=cache._replace(
            k=zero_dead(cache.k, live),
            v=zero_dead(cache.v, live),
            window_k=zero_dead(cache.window_k, wlive),
            window_v=zero_dead(cache.window_v, wlive),
        ),
        window_hidx=jnp.where(wlive, h, -1),
    )


def kernel_coverage(pattern):
    """What `blocksparse` computes for `pattern`, from its loop tables (`tile_tables`):
    `(covered [N, N] int, unmasked [N, N] bool)`: how often each (query, key) pair is computed
    (whole tiles and band windows, padding left out), and the pairs in full tiles (computed
    without a static mask). Partial tiles and band windows are masked in the kernel, so
    `check_kernel_coverage` asks: covered <= 1, allowed -> covered, unmasked -> allowed."""
    from phd_jax.attention.tables import tile_tables

    tab, bk = tile_tables(pattern), pattern.block_kv
    n = tab.n
    covered, unmasked = np.zeros((n, n), int), np.zeros((n, n), bool)
    for st in tab.stacks:
        for i in range(st.count):
            r0 = st.row0 + i * st.rows
            rows = slice(r0, r0 + st.rows)
            for table, count, full in ((st.full, st.full_count, True), (st.part, st.part_count, False)):
                for t in range(count[i]):
                    j = int(table[i, t])
                    cols = slice(j * bk, min((j + 1) * bk, tab.key_limit))
                    covered[rows, cols] += 1
                    unmasked[rows, cols] |= full
            if st.band is not None:
                sub, reach = st.band.sub, st.band.reach
                for q0 in range(r0, r0 + st.rows, sub):
                    covered[q0 : q0 + sub, max(q0 - reach, tab.key_limit) : min(q0 + sub, n)] += 1
    return covered, unmasked


def check_kernel_coverage(mask, pattern):
    """`blocksparse`'s tables for `pattern` compute every allowed pair of the dense `mask` once,
    and only allowed pairs in full (unmasked) tiles."""
    covered, unmasked = kernel_coverage(pattern)
    assert covered.max() <= 1, "a pair is computed twice"
    assert not (mask & (covered == 0)).any(), "an allowed pair is never computed"
    assert not (unmasked & ~mask).any(), "a full tile holds a masked pair"


def computed_pairs(pattern) -> int:
    """Query-key pairs `blocksparse` computes for `pattern` (whole tiles and band windows,
    padding included): its attention work, against `allowed`'s pairs."""
    from phd_jax.attention.tables import tile_tables

    bk = pattern.block_kv
    return sum(
        int((st.full_count + st.part_count).sum()) * st.rows * bk
        + (st.count * st.rows * st.band.width if st.band is not None else 0)
        for st in tile_tables(pattern).stacks
    )


# A tiny PHD-2 workdir written by 0.1.0 (tests/fixtures/v0_1_0): evaluation tests use a copy of it.
V010_WORKDIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "v0_1_0", "tiny_workdir")


def copy_v010_workdir(tmp_path) -> str:
    path = str(tmp_path / "run")
    shutil.copytree(V010_WORKDIR, path)
    return path


def file_snapshot(folder) -> dict:
    """{path: (size, mtime)} of every file below `folder`: equal before and after = nothing written."""
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            out[p] = (os.path.getsize(p), os.path.getmtime(p))
    return out


def random_hf_model(path: str, hf_config, model_cls: str, dtype=None, seed: int = 0, **save_kw):
    """A random transformers model (`model_cls`, e.g. "LlamaForCausalLM") built offline from
    `hf_config`, every weight non-trivial (norm scales near 1), saved to `path`; returns it."""
    import torch
    import transformers

    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(hf_config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.2 if "norm" not in name else 0.1) + ("norm" in name))
    model = model.to(torch.float32 if dtype is None else dtype)
    model.save_pretrained(path, **save_kw)
    return model
