"""Attention backends. All consume the same static masks from `phd_jax.masks`.

- `dense`: the literal reference; the full mask and a plain masked softmax.
- `blocksparse`: pure JAX/XLA; computes only the non-empty tiles of the static
  block pattern, as contiguous key runs (no gathers, no copies of K/V blocks,
  no mask on full tiles). Default on CPU and GPU.
- `splash`: the TPU Pallas splash-attention kernel fed with the same mask.
  Default on TPU; elsewhere it runs in Pallas interpret mode (for tests).

Shapes everywhere: q `[B, N, H, D]`, k/v `[B, N, KVH, D]` (grouped-query
attention: H is a multiple of KVH), output `[B, N, H, D]`.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from phd_jax.config import ModelConfig
from phd_jax.masks import BlockPattern, Layout

# Finite, so that a fully masked row gives a uniform (never NaN) softmax.
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


def resolve_backend(name: str) -> str:
    """`auto` picks `splash` on TPU and `blocksparse` elsewhere."""
    if name == "auto":
        return "splash" if jax.default_backend() == "tpu" else "blocksparse"
    return name


def layout_kind(config: ModelConfig) -> str:
    """The token order a backend runs in: the literal paper layout for `dense`."""
    return "paper" if resolve_backend(config.attention) == "dense" else "kernel"


def attend(q, k, v, layout: Layout, config: ModelConfig):
    """Masked attention over the static `layout`, with the backend `config.attention` picks."""
    backend = resolve_backend(config.attention)
    if backend == "dense":
        return dense_attention(q, k, v, layout.mask)
    pattern = layout.pattern(config.block_q, config.block_kv)
    if backend == "blocksparse":
        return blocksparse_attention(q, k, v, pattern)
    return splash_attention(q, k, v, pattern)


def _dot_ready(x):
    """XLA:CPU has no bf16 x bf16 -> f32 dot; upcast there (GPU/TPU keep bf16 inputs)."""
    if jax.default_backend() == "cpu" and x.dtype in (jnp.bfloat16, jnp.float16):
        return x.astype(jnp.float32)
    return x


def _grouped(q, num_kv_heads: int):
    """Scale q and split heads into (kv head, group): `[B, KVH, G, N, D]`."""
    b, n, h, d = q.shape
    q = q * jnp.asarray(d ** -0.5, q.dtype)
    return q.reshape(b, n, num_kv_heads, h // num_kv_heads, d).transpose(0, 2, 3, 1, 4)


def _ungrouped(o, dtype):
    b, kvh, g, n, d = o.shape
    return o.transpose(0, 3, 1, 2, 4).reshape(b, n, kvh * g, d).astype(dtype)


def partial_attention(qg, groups, kv_layout: str = "bksd"):
    """Unnormalised attention of queries over the union of several key groups.

    qg: `[B, KVH, G, Q, D]`, already scaled. groups: `(k, v, mask)` with k/v in
    `kv_layout` ("bksd" = `[B, KVH, S, D]`, "bskd" = `[B, S, KVH, D]`) and a
    boolean mask broadcastable to `[B, KVH, G, Q, S]`, or None for "all allowed".
    Returns `(m, l, o)`: row max, sum of exp(s - m), and exp(s - m) @ v, all
    float32, so that partials over disjoint key sets merge exactly (`combine`).
    """
    scores = []
    for k, _, mask in groups:
        s = jnp.einsum(f"bkgqd,{kv_layout}->bkgqs", _dot_ready(qg), _dot_ready(k),
                       preferred_element_type=jnp.float32)
        scores.append(s if mask is None else jnp.where(mask, s, MASK_VALUE))
    m = functools.reduce(jnp.maximum, [s.max(axis=-1, keepdims=True) for s in scores])
    m = jax.lax.stop_gradient(m)  # softmax is invariant to the shift
    probs = [jnp.exp(s - m) for s in scores]
    denom = functools.reduce(jnp.add, [p.sum(axis=-1, keepdims=True) for p in probs])
    out = functools.reduce(jnp.add, [
        jnp.einsum(f"bkgqs,{kv_layout}->bkgqd", _dot_ready(p.astype(v.dtype)), _dot_ready(v),
                   preferred_element_type=jnp.float32)
        for p, (_, v, _) in zip(probs, groups)])
    return m, denom, out


def combine(*partials):
    """Softmax-normalised output from `(m, l, o)` partials over disjoint key sets."""
    m = functools.reduce(jnp.maximum, [p[0] for p in partials])
    scale = [jnp.exp(p[0] - m) for p in partials]
    denom = functools.reduce(jnp.add, [a * p[1] for a, p in zip(scale, partials)])
    out = functools.reduce(jnp.add, [a * p[2] for a, p in zip(scale, partials)])
    return out / denom


def dense_attention(q, k, v, mask: np.ndarray):
    """Reference: full scores, the full boolean mask `[N, N]`, plain softmax."""
    qg = _grouped(q, k.shape[2])
    return _ungrouped(combine(partial_attention(qg, [(k, v, jnp.asarray(mask))], "bskd")), q.dtype)


def _band_partial(qg, kt, vt, pattern: BlockPattern):
    """`(m, l, o)` of the band rows (from `band_start` on) at once: query blocks of
    c rows, each over its own and the previous block of keys (one batched dot
    instead of a thin run per query block). The blocks fold into the batch axis."""
    c, band = pattern.band_blocks
    start, n = pattern.band_start, qg.shape[3]
    b, kvh, g, _, d = qg.shape
    nb = band.shape[0]
    pad = nb * c - (n - start)
    qb = jnp.pad(qg[:, :, :, start:], ((0, 0),) * 3 + ((0, pad), (0, 0)))
    qb = qb.reshape(b, kvh, g, nb, c, d).transpose(0, 3, 1, 2, 4, 5).reshape(b * nb, kvh, g, c, d)

    def windows(x):  # [B, KVH, S, D] -> [B*nb, KVH, 2c, D]: block j and the one before it
        blocks = jnp.pad(x[:, :, start:], ((0, 0),) * 2 + ((c, pad), (0, 0)))
        blocks = blocks.reshape(b, kvh, nb + 1, c, d)
        pairs = jnp.concatenate([blocks[:, :, :-1], blocks[:, :, 1:]], axis=3)
        return pairs.transpose(0, 2, 1, 3, 4).reshape(b * nb, kvh, 2 * c, d)

    mask = jnp.asarray(np.tile(band, (b, 1, 1))[:, None, None])   # [B*nb, 1, 1, c, 2c]
    parts = partial_attention(qb, [(windows(kt), windows(vt), mask)])
    rows = lambda x: (x.reshape(b, nb, kvh, g, c, -1).transpose(0, 2, 3, 1, 4, 5)  # noqa: E731
                      .reshape(b, kvh, g, nb * c, -1)[:, :, :, :n - start])
    return tuple(rows(x) for x in parts)


def blocksparse_attention(q, k, v, pattern: BlockPattern):
    """Compute only the non-empty parts of `pattern`, forward and backward.

    For each query block the allowed keys form a few contiguous runs (for PHD's
    kernel layout: full originals, then a masked staircase). Each run is a
    static slice of K/V, masked only if partial, and one softmax spans the
    runs. PHD's hidden-to-hidden band is computed for all rows at once in
    small blocks and merged in. Everything is static, so XLA sees plain dots
    on slices; autodiff gives a backward pass over the same work.
    """
    n = q.shape[1]
    qg = _grouped(q, k.shape[2])
    kt, vt = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)   # [B, KVH, S, D]
    parts = []
    for i, runs in enumerate(pattern.runs):
        q0, q1 = i * pattern.block_q, min((i + 1) * pattern.block_q, n)
        if not runs:  # no key before the band (or none at all)
            shape = qg.shape[:3] + (q1 - q0, 1)
            parts.append((jnp.full(shape, MASK_VALUE), jnp.zeros(shape),
                          jnp.zeros(shape[:-1] + qg.shape[-1:])))
            continue
        groups = [(kt[:, :, r.start:r.stop], vt[:, :, r.start:r.stop],
                   jnp.asarray(pattern.mask[q0:q1, r.start:r.stop]) if r.partial else None)
                  for r in runs]
        parts.append(partial_attention(qg[:, :, :, q0:q1], groups))
    m, denom, o = (jnp.concatenate(x, axis=3) for x in zip(*parts))
    if pattern.band_start is None:
        return _ungrouped(o / denom, q.dtype)
    s = pattern.band_start   # only band rows merge two partials
    band = combine((m[:, :, :, s:], denom[:, :, :, s:], o[:, :, :, s:]), _band_partial(qg, kt, vt, pattern))
    return _ungrouped(jnp.concatenate([o[:, :, :, :s] / denom[:, :, :, :s], band], axis=3), q.dtype)


def _splash_sizes(pattern: BlockPattern):
    bq, bk = pattern.block_q, pattern.block_kv
    if bq % 128 or bk % 128:
        raise ValueError(f"splash attention needs block_q and block_kv that are multiples of 128, "
                         f"got block_q={bq}, block_kv={bk}")
    n = pattern.mask.shape[0]
    step = int(np.lcm(bq, bk))
    return bq, bk, -(-n // step) * step


@functools.lru_cache(maxsize=8)
def _splash_mask(pattern: BlockPattern) -> np.ndarray:
    _, _, n_pad = _splash_sizes(pattern)
    n = pattern.mask.shape[0]
    mask = np.zeros((n_pad, n_pad), bool)
    mask[:n, :n] = pattern.mask
    mask[np.arange(n, n_pad), np.arange(n, n_pad)] = True  # padded rows see only themselves
    return mask


def _splash_kernel(pattern: BlockPattern, num_heads: int, interpret: bool):
    # Built per trace: the kernel holds jax arrays, which must not outlive a trace.
    # The expensive numpy mask processing is cached inside splash itself.
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    bq, bk, _ = _splash_sizes(pattern)
    mask = _splash_mask(pattern)
    sizes = sa.BlockSizes(block_q=bq, block_kv=bk, block_kv_compute=bk, block_q_dkv=bq,
                          block_kv_dkv=bk, block_kv_dkv_compute=bk, block_q_dq=bq, block_kv_dq=bk)
    heads = sa.MultiHeadMask([sa.NumpyMask(mask)] * num_heads)
    return sa.make_splash_mha(heads, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                              interpret=interpret)


def splash_attention(q, k, v, pattern: BlockPattern, interpret: bool | None = None):
    """TPU splash attention with `pattern.mask` (a `NumpyMask`), padded to whole blocks."""
    if interpret is None:
        interpret = jax.default_backend() != "tpu"
    b, n, h, d = q.shape
    _, _, n_pad = _splash_sizes(pattern)
    kernel = _splash_kernel(pattern, h, interpret)
    pad = lambda x: jnp.pad(x.transpose(0, 2, 1, 3), ((0, 0), (0, 0), (0, n_pad - n), (0, 0)))  # noqa: E731
    qs = q * jnp.asarray(d ** -0.5, q.dtype)
    out = jax.vmap(kernel)(pad(qs), pad(k), pad(v))
    return out[:, :, :n].transpose(0, 2, 1, 3).astype(q.dtype)


class KVCache(NamedTuple):
    """One layer's (or, stacked, every layer's) persistent cache as decode reads it.

    k, v: `[B, S, KVH, D]` original-token cache; window_k, window_v: `[B, W, KVH, D]`
    ring buffer of recent hidden decoding tokens (W = 0 outside PHD-SWA/CSWA).
    """
    k: jax.Array
    v: jax.Array
    window_k: jax.Array
    window_v: jax.Array


def cached_attention(q, new_k, new_v, cache: KVCache, mask):
    """Decode-time attention of Q new tokens over [cache | window | new tokens].

    q `[B, Q, H, D]`; new_k/new_v `[B, Q, KVH, D]`; `cache` one layer's `KVCache`;
    mask `[B, Q, S + W + Q]` from `masks.allowed`.
    The cache is read in place (no concatenation of keys).
    """
    s, w = cache.k.shape[1], cache.window_k.shape[1]
    qg = _grouped(q, cache.k.shape[2])
    m = mask[:, None, None]  # [B, 1, 1, Q, S+W+Q]
    groups = [(cache.k, cache.v, m[..., :s]), (new_k, new_v, m[..., s + w:])]
    if w:
        groups.insert(1, (cache.window_k, cache.window_v, m[..., s:s + w]))
    return _ungrouped(combine(partial_attention(qg, groups, "bskd")), q.dtype)
