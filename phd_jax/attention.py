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
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask_lib

from phd_jax.config import ModelConfig
from phd_jax.masks import EMPTY, FULL, BlockPattern, Layout, document_allowed

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


def chunks_matter(config: ModelConfig) -> bool:
    """Whether the chunk rule can remove a pair (phd_cswa with hidden tokens and a window)."""
    return config.effective_chunk is not None and config.effective_window >= 1


def static_config(config: ModelConfig, documents: bool) -> ModelConfig:
    """The config whose static pattern a backend runs. With packed documents, chunks count from
    each document's start, which only the run-time mask knows: phd_cswa runs phd_swa's static
    pattern (a superset) and the run-time mask cuts the chunks (spec section 3)."""
    if documents and chunks_matter(config):
        return config.replace(variant="phd_swa", chunk=None)
    return config


def document_mask(config: ModelConfig, layout: Layout, docs):
    """`mask(rows, cols) -> [B, *rows x cols]` of the packed-documents rule for token indices of
    `layout` (static numpy index arrays that broadcast), or None without documents.

    docs: `(doc, offset)`, each `[B, N]` in `layout`'s token order."""
    if docs is None:
        return None
    doc, off = docs
    copy = layout.tokens[1]

    def mask(rows, cols):
        return document_allowed(config.variant, off[:, rows], copy[rows], doc[:, rows],
                                off[:, cols], copy[cols], doc[:, cols], config.repeat,
                                config.effective_window, config.effective_chunk)
    return mask


def attend(q, k, v, layout: Layout, config: ModelConfig, docs=None):
    """Masked attention over the static `layout`, with the backend `config.attention` picks.

    docs: None, or `(doc, offset)` `[B, N]` per token of `layout` (packed documents): a
    run-time mask on top of the static pattern (`layout` is then `static_config`'s)."""
    backend = resolve_backend(config.attention)
    doc_mask = document_mask(config, layout, docs)
    if backend == "dense":
        if doc_mask is None:
            return dense_attention(q, k, v, layout.mask)
        n = np.arange(layout.size)
        return dense_attention(q, k, v, doc_mask(n[:, None], n[None, :]) & layout.mask)
    pattern = layout.pattern(config.block_q, config.block_kv)
    if backend == "blocksparse":
        return blocksparse_attention(q, k, v, pattern, doc_mask)
    if docs is not None and chunks_matter(config):
        raise ValueError(f"attention='splash' with segment_ids cannot count {config.name}'s chunks "
                         f"from each document's start: use attention='blocksparse' or 'dense' "
                         f"for document masking with phd_cswa")
    return splash_attention(q, k, v, pattern, segment_ids=None if docs is None else docs[0])


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


def dense_attention(q, k, v, mask):
    """Reference: full scores, the full boolean mask `[N, N]` (or per sequence `[B, N, N]`),
    plain softmax."""
    qg = _grouped(q, k.shape[2])
    mask = jnp.asarray(mask)
    if mask.ndim == 3:
        mask = mask[:, None, None]
    return _ungrouped(combine(partial_attention(qg, [(k, v, mask)], "bskd")), q.dtype)


def _band_partial(qg, kt, vt, pattern: BlockPattern, doc_mask=None):
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
    if doc_mask is not None:
        _, r, col = pattern.band_index
        mask = mask & doc_mask(r, col).reshape(b * nb, 1, 1, c, 2 * c)
    parts = partial_attention(qb, [(windows(kt), windows(vt), mask)])
    rows = lambda x: (x.reshape(b, nb, kvh, g, c, -1).transpose(0, 2, 3, 1, 4, 5)  # noqa: E731
                      .reshape(b, kvh, g, nb * c, -1)[:, :, :, :n - start])
    return tuple(rows(x) for x in parts)


def _run_mask(pattern: BlockPattern, q0: int, q1: int, run, doc_mask):
    """The mask of one key run of one query block: static if partial, and the documents'."""
    mask = jnp.asarray(pattern.tile_mask(q0, q1, run.start, run.stop)) if run.partial else None
    if doc_mask is None:
        return mask
    docs = doc_mask(np.arange(q0, q1)[:, None], np.arange(run.start, run.stop)[None, :])[:, None, None]
    return docs if mask is None else mask & docs


def blocksparse_attention(q, k, v, pattern: BlockPattern, doc_mask=None):
    """Compute only the non-empty parts of `pattern`, forward and backward.

    For each query block the allowed keys form a few contiguous runs (for PHD's
    kernel layout: full originals, then a masked staircase). Each run is a
    static slice of K/V, masked only if partial, and one softmax spans the
    runs. PHD's hidden-to-hidden band is computed for all rows at once in
    small blocks and merged in. Everything is static, so XLA sees plain dots
    on slices; autodiff gives a backward pass over the same work.

    `doc_mask(rows, cols) -> [B, ...]` (packed documents, `document_mask`) is applied on top
    of the static pattern on every computed part, full runs included.
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
                   _run_mask(pattern, q0, q1, r, doc_mask)) for r in runs]
        parts.append(partial_attention(qg[:, :, :, q0:q1], groups))
    m, denom, o = (jnp.concatenate(x, axis=3) for x in zip(*parts))
    if pattern.band_start is None:
        return _ungrouped(o / denom, q.dtype)
    s = pattern.band_start   # only band rows merge two partials
    band = combine((m[:, :, :, s:], denom[:, :, :, s:], o[:, :, :, s:]),
                   _band_partial(qg, kt, vt, pattern, doc_mask))
    return _ungrouped(jnp.concatenate([o[:, :, :, :s] / denom[:, :, :, :s], band], axis=3), q.dtype)


def splash_sizes(pattern: BlockPattern):
    bq, bk = pattern.block_q, pattern.block_kv
    if bq % 128 or bk % 128:
        raise ValueError(f"splash attention needs block_q and block_kv that are multiples of 128, "
                         f"got block_q={bq}, block_kv={bk}")
    n = pattern.shape[0]
    step = int(np.lcm(bq, bk))
    return bq, bk, -(-n // step) * step


class _UniformTile(np.ndarray):
    """A whole empty or full tile: `any()` / `all()` answer without scanning it
    (splash asks both for each of the (N / block)^2 tiles, several times). Arrays
    derived from one (views, ufunc results) are scanned as usual."""

    value = None

    def __array_finalize__(self, obj):
        self.value = None

    def any(self, *args, **kwargs):
        return self.value if self.value is not None and not (args or kwargs) else super().any(*args, **kwargs)

    def all(self, *args, **kwargs):
        return self.value if self.value is not None and not (args or kwargs) else super().all(*args, **kwargs)


class SplashPatternMask(splash_mask_lib._ComputableMask):
    """A pattern's mask for splash, padded to `n_pad` (padded rows see only themselves),
    computed from `allowed` instead of stored: splash evaluates `mask_function` inside
    its kernel on partial tiles; on the host it reads tiles through `__getitem__`, which
    takes whole tiles' classes from the pattern (no `[N, N]` array anywhere)."""

    def __init__(self, pattern: BlockPattern, n_pad: int):
        self.pattern, n, layout = pattern, pattern.shape[0], pattern.layout

        def mask_function(q, k):   # numpy on the host, jax in the kernel: operators only
            inside = (q < n) & (k < n)
            return (inside & layout.allowed_at(q, k)) | (~inside & (q == k))

        super().__init__((n_pad, n_pad), mask_function)
        self._bq, self._bk = pattern.block_q, pattern.block_kv
        # Tile classes of whole tiles inside the pattern (row-major bytes: fast lookups).
        whole = pattern.block_mask[:n // self._bq, :n // self._bk]
        self._rows = [row.tobytes() for row in whole]
        self._tiles = {}
        for status, value in ((EMPTY, False), (FULL, True)):
            tile = np.full((self._bq, self._bk), value).view(_UniformTile)
            tile.value, tile.flags.writeable = value, False
            self._tiles[status] = tile

    def __getitem__(self, idx) -> np.ndarray:
        try:   # splash's own reads: whole tiles, `[i*bq:(i+1)*bq, j*bk:(j+1)*bk]`
            q, k = idx
            i, r = divmod(q.start, self._bq)
            j, c = divmod(k.start, self._bk)
            if (r or c or q.start < 0 or k.start < 0 or q.step not in (None, 1) or k.step not in (None, 1)
                    or q.stop - q.start != self._bq or k.stop - k.start != self._bk):
                raise ValueError
            tile = self._tiles.get(self._rows[i][j])
        except (TypeError, ValueError, IndexError, AttributeError):
            tile = None
        return tile if tile is not None else super().__getitem__(idx)

    def __eq__(self, other: object):
        return (type(other) is type(self) and self.shape == other.shape
                and self.pattern.layout == other.pattern.layout)

    def __hash__(self):
        return hash((type(self), self.shape, self.pattern.layout))


@functools.lru_cache(maxsize=8)
def _splash_mask(pattern: BlockPattern):
    if pattern.layout is None:
        raise ValueError("splash attention needs a pattern built from a Layout (Layout.pattern), "
                         "whose mask it can compute inside the kernel")
    return SplashPatternMask(pattern, splash_sizes(pattern)[2])


def _splash_kernel(pattern: BlockPattern, num_heads: int, interpret: bool):
    # Built per trace: the kernel holds jax arrays, which must not outlive a trace.
    # The expensive numpy mask processing is cached inside splash itself.
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    bq, bk, _ = splash_sizes(pattern)
    mask = _splash_mask(pattern)
    sizes = sa.BlockSizes(block_q=bq, block_kv=bk, block_kv_compute=bk, block_q_dkv=bq,
                          block_kv_dkv=bk, block_kv_dkv_compute=bk, block_q_dq=bq, block_kv_dq=bk)
    heads = sa.MultiHeadMask([mask] * num_heads)
    return sa.make_splash_mha(heads, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                              interpret=interpret)


def splash_attention(q, k, v, pattern: BlockPattern, interpret: bool | None = None, segment_ids=None):
    """TPU splash attention with the pattern's mask (computed, not stored), padded to whole blocks.

    segment_ids `[B, N]` (optional): pairs only within one segment (splash's `SegmentIds`).
    Under a multi-device mesh (`jax.set_mesh` plus flax logical-axis rules, as the trainer
    sets them) the kernel runs per shard in a `shard_map`: batch and heads split as the rules
    say, the sequence whole (as MaxText wraps it).
    """
    local = functools.partial(_splash_local, pattern=pattern, interpret=interpret)
    args = (q, k, v) if segment_ids is None else (q, k, v, jnp.asarray(segment_ids, jnp.int32))
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return local(*args)
    import flax.linen as nn
    rules = nn.get_logical_axis_rules()
    if not rules:
        return local(*args)
    qspec = nn.logical_to_mesh_axes(("activation_batch", None, "activation_heads", None), rules)
    kvspec = nn.logical_to_mesh_axes(("activation_batch", None, "activation_kv_heads", None), rules)
    segspec = nn.logical_to_mesh_axes(("activation_batch", None), rules)
    in_specs = (qspec, kvspec, kvspec) + ((segspec,) if segment_ids is not None else ())
    return jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=qspec, check_vma=False)(*args)


def _splash_local(q, k, v, segment_ids=None, *, pattern: BlockPattern, interpret: bool | None):
    if interpret is None:
        interpret = jax.default_backend() != "tpu"
    b, n, h, d = q.shape
    _, _, n_pad = splash_sizes(pattern)
    kernel = _splash_kernel(pattern, h, interpret)
    pad = lambda x: jnp.pad(x.transpose(0, 2, 1, 3), ((0, 0), (0, 0), (0, n_pad - n), (0, 0)))  # noqa: E731
    qs = q * jnp.asarray(d ** -0.5, q.dtype)
    if segment_ids is None:
        out = jax.vmap(kernel)(pad(qs), pad(k), pad(v))
    else:
        from jax.experimental.pallas.ops.tpu.splash_attention import SegmentIds

        seg = jnp.pad(jnp.asarray(segment_ids, jnp.int32), ((0, 0), (0, n_pad - n)), constant_values=-1)
        out = jax.vmap(lambda q_, k_, v_, s_: kernel(q_, k_, v_, segment_ids=SegmentIds(q=s_, kv=s_)))(
            pad(qs), pad(k), pad(v), seg)
    return out[:, :, :n].transpose(0, 2, 1, 3).astype(q.dtype)


class KVCache(NamedTuple):
    """One layer's (or, stacked, every layer's) persistent cache as decode reads it.

    k, v: `[B, KVH, S, D]` original-token cache; window_k, window_v: `[B, KVH, W, D]`
    ring buffer of recent hidden decoding tokens (W = 0 outside PHD-SWA/CSWA). Heads
    before slots: the layout the attention dots read, so no decode step transposes the
    cache (a `[B, S, KVH, D]` cache cost a copy of every layer's cache per step).
    """
    k: jax.Array
    v: jax.Array
    window_k: jax.Array
    window_v: jax.Array


def cached_attention(q, new_k, new_v, cache: KVCache, mask):
    """Decode-time attention of Q new tokens over [cache | window | new tokens].

    q `[B, Q, H, D]`; new_k/new_v `[B, Q, KVH, D]`; `cache` one layer's `KVCache`;
    mask `[B, Q, S + W + Q]` from `masks.allowed`.
    The cache is read in place (no concatenation of keys, no transpose).
    """
    s, w = cache.k.shape[2], cache.window_k.shape[2]
    qg = _grouped(q, cache.k.shape[1])
    m = mask[:, None, None]  # [B, 1, 1, Q, S+W+Q]
    new = [(new_k.transpose(0, 2, 1, 3), new_v.transpose(0, 2, 1, 3), m[..., s + w:])]
    groups = [(cache.k, cache.v, m[..., :s])] + new
    if w:
        groups.insert(1, (cache.window_k, cache.window_v, m[..., s:s + w]))
    return _ungrouped(combine(partial_attention(qg, groups, "bksd")), q.dtype)
