"""Attention backends. All consume the same static masks from `phd_jax.masks`.

- `dense`: the literal reference; the full mask and a plain masked softmax.
- `blocksparse`: pure JAX/XLA, flash-style; loops over the non-empty tiles of the
  static block pattern (masks only on partial tiles), recomputes them in a custom
  backward pass: bounded compile time, O(N) memory. Default on CPU and GPU.
- `splash`: the TPU Pallas splash-attention kernel fed with the same mask.
  Default on TPU; elsewhere it runs in Pallas interpret mode (for tests).

Shapes everywhere: q `[B, N, H, D]`, k/v `[B, N, KVH, D]` (grouped-query
attention: H is a multiple of KVH), output `[B, N, H, D]`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask_lib

from phd_jax.config import ModelConfig
from phd_jax.masks import EMPTY, FULL, PARTIAL, BlockPattern, Layout, document_allowed

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
    """`DocumentMask` of the packed-documents rule for token indices of `layout`
    (`mask(rows, cols) -> [B, *rows x cols]`, numpy or jax index arrays), or None without documents.

    docs: `(doc, offset)`, each `[B, N]` in `layout`'s token order."""
    if docs is None:
        return None
    doc, off = docs
    return DocumentMask(jnp.asarray(doc), jnp.asarray(off), jnp.asarray(layout.tokens[1]), config.variant,
                        config.repeat, config.effective_window, config.effective_chunk)


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


# ---------------------------------------------------------------------------
# blocksparse: a flash-style kernel over the static block pattern, in pure JAX
# ---------------------------------------------------------------------------


class _TileTables(NamedTuple):
    """Static loop tables of a pattern, built once with numpy at trace time: per query
    block, its non-empty key tiles as two lists padded to a fixed length, with counts:
    full tiles (no static mask) and partial tiles. Patterns without a `Layout` also get
    the stacked masks of their partial tiles (`masks[slot[i, t]]`); with a layout the
    kernel computes a partial tile's mask from `allowed` inside the loop."""
    n: int
    nq: int
    nk: int
    full: np.ndarray          # [nq, F] int32 key block indices
    full_count: np.ndarray    # [nq] int32
    part: np.ndarray          # [nq, P] int32
    part_count: np.ndarray    # [nq] int32
    slot: np.ndarray | None   # [nq, P] int32 index into masks
    masks: np.ndarray | None  # [partial tiles, bq, bk] bool


def _padded(lists: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    count = np.array([len(x) for x in lists], np.int32)
    table = np.zeros((len(lists), max(1, int(count.max(initial=0)))), np.int32)
    for i, x in enumerate(lists):
        table[i, :len(x)] = x
    return table, count


@functools.lru_cache(maxsize=32)
def _tile_tables(pattern: BlockPattern) -> _TileTables:
    n, bq, bk = pattern.shape[0], pattern.block_q, pattern.block_kv
    blocks = pattern.block_mask.copy()
    if n % bk:   # a ragged last key block is always masked: its padding holds no keys
        blocks[:, -1] = np.where(blocks[:, -1] == FULL, PARTIAL, blocks[:, -1])
    full = [np.flatnonzero(row == FULL).tolist() for row in blocks]
    partial = [np.flatnonzero(row == PARTIAL).tolist() for row in blocks]
    slot = masks = None
    if pattern.layout is None:
        slot, tiles = np.zeros((len(partial), max(1, max(map(len, partial)))), np.int32), []
        for i, cols in enumerate(partial):
            q0, q1 = i * bq, min((i + 1) * bq, n)
            for t, j in enumerate(cols):
                k0, k1 = j * bk, min((j + 1) * bk, n)
                tile = np.zeros((bq, bk), bool)
                tile[:q1 - q0, :k1 - k0] = pattern.tile_mask(q0, q1, k0, k1)
                slot[i, t] = len(tiles)
                tiles.append(tile)
        masks = np.stack(tiles) if tiles else np.zeros((1, bq, bk), bool)
    return _TileTables(n, *blocks.shape, *_padded(full), *_padded(partial), slot, masks)


class _Kernel(NamedTuple):
    """What the loops need besides the arrays: the pattern, its tables and the run-time mask."""
    pattern: BlockPattern
    tables: _TileTables
    doc_fn: Callable | None   # (docs, rows, cols) -> [B, bq, bk]

    def mask(self, i, num_rows: int, t, j, partial: bool, docs):
        """The mask of tile (query block i of `num_rows` rows, key block j = entry t of its
        list), broadcastable to the scores `[B, KVH, G, num_rows, bk]`, or None (full, no documents)."""
        p, tab = self.pattern, self.tables
        rows = i * p.block_q + jnp.arange(num_rows, dtype=jnp.int32)[:, None]
        cols = j * p.block_kv + jnp.arange(p.block_kv, dtype=jnp.int32)[None, :]
        mask = None
        if partial and p.layout is not None:
            mask = p.layout.allowed_at(rows, cols) & (cols < tab.n)
        elif partial:
            mask = jnp.asarray(tab.masks)[jnp.asarray(tab.slot)[i, t]][:num_rows]
        if self.doc_fn is not None:   # always on whole blocks (one shape for any callable)
            block = i * p.block_q + jnp.arange(p.block_q, dtype=jnp.int32)[:, None]
            doc = self.doc_fn(docs, jnp.minimum(block, tab.n - 1), jnp.minimum(cols, tab.n - 1))
            doc = doc[:, None, None, :num_rows]
            mask = doc if mask is None else mask & doc
        return mask

    def tiles(self, i, num_rows: int, body, carry, docs):
        """Run `body(key block, mask, carry)` over query block i's full tiles, then its
        partial tiles (tables without any entry are skipped at trace time)."""
        tab = self.tables
        for partial, table, count in ((False, tab.full, tab.full_count), (True, tab.part, tab.part_count)):
            if not count.any():
                continue
            table = jnp.asarray(table)

            def step(t, c, partial=partial, table=table):
                j = table[i, t]
                return body(j, self.mask(i, num_rows, t, j, partial, docs), c)
            carry = jax.lax.fori_loop(0, jnp.asarray(count)[i], step, carry)
        return carry


def _scores(qi, kj, mask):
    s = jnp.einsum("bkgqd,bksd->bkgqs", qi, kj, preferred_element_type=jnp.float32)
    return s if mask is None else jnp.where(mask, s, MASK_VALUE)


def _tile(x, j, bk: int):
    """Key tile j `[B, KVH, bk, D]` of `[B, KVH, keys, D]`."""
    return jax.lax.dynamic_slice_in_dim(x, j * bk, bk, axis=2)


def _stacks(qs):
    """`(first query block, stack)` of each stack of query blocks (whole blocks, then a ragged one)."""
    first = np.cumsum([0] + [q.shape[0] for q in qs])
    return zip(first.tolist(), qs)


def _flash_forward(kern: _Kernel, qs, k, v, docs):
    """qs: stacks of query blocks `[blocks, B, KVH, G, rows, D]` (scaled), k/v `[B, KVH, nk * bk, D]`
    -> per stack the output (like it) and the row log-sum-exp `[blocks, B, KVH, G, rows]`,
    with an online softmax over each block's tiles."""
    bk = kern.pattern.block_kv

    def block(_, x):
        i, qi = x
        m = jnp.full(qi.shape[:-1], -jnp.inf, jnp.float32)
        o = jnp.zeros(qi.shape, jnp.float32)

        def body(j, mask, c):
            m, l, o = c
            s = _scores(qi, _tile(k, j, bk), mask)
            m_new = jnp.maximum(m, s.max(axis=-1))
            alpha, p = jnp.exp(m - m_new), jnp.exp(s - m_new[..., None])
            pv = jnp.einsum("bkgqs,bksd->bkgqd", p.astype(v.dtype), _tile(v, j, bk),
                            preferred_element_type=jnp.float32)
            return m_new, alpha * l + p.sum(axis=-1), alpha[..., None] * o + pv
        m, l, o = kern.tiles(i, qi.shape[-2], body, (m, jnp.zeros_like(m), o), docs)
        seen = l > 0           # rows of a block without any tile get 0
        l = jnp.where(seen, l, 1.0)
        return None, ((o / l[..., None]).astype(qi.dtype), jnp.where(seen, m + jnp.log(l), 0.0))
    outs = [jax.lax.scan(block, None, (first + jnp.arange(q.shape[0]), q))[1] for first, q in _stacks(qs)]
    return tuple(o for o, _ in outs), tuple(lse for _, lse in outs)


def _flash_backward(kern: _Kernel, qs, k, v, docs, outs, lses, douts):
    """Recompute each tile's probabilities from the saved log-sum-exp: dq per query block,
    dk/dv accumulated in place (float32). O(N) memory."""
    bk = kern.pattern.block_kv

    def block(acc, x):
        i, qi, di, lse_i, delta_i = x

        def body(j, mask, c):
            dq, dk, dv = c
            kj, vj = _tile(k, j, bk), _tile(v, j, bk)
            p = jnp.exp(_scores(qi, kj, mask) - lse_i[..., None])
            dp = jnp.einsum("bkgqd,bksd->bkgqs", di, vj, preferred_element_type=jnp.float32)
            ds = p * (dp - delta_i[..., None])
            if mask is not None:
                ds = jnp.where(mask, ds, 0.0)
            dq = dq + jnp.einsum("bkgqs,bksd->bkgqd", ds.astype(kj.dtype), kj, preferred_element_type=jnp.float32)
            dk_j = jnp.einsum("bkgqs,bkgqd->bksd", ds.astype(qi.dtype), qi, preferred_element_type=jnp.float32)
            dv_j = jnp.einsum("bkgqs,bkgqd->bksd", p.astype(di.dtype), di, preferred_element_type=jnp.float32)
            add = lambda acc, x: jax.lax.dynamic_update_slice_in_dim(  # noqa: E731
                acc, _tile(acc, j, bk) + x, j * bk, axis=2)
            return dq, add(dk, dk_j), add(dv, dv_j)
        dq, dk, dv = kern.tiles(i, qi.shape[-2], body, (jnp.zeros(qi.shape, jnp.float32), *acc), docs)
        return (dk, dv), dq.astype(qi.dtype)
    acc, dqs = (jnp.zeros(k.shape, jnp.float32),) * 2, []
    for (first, q), out, lse, dout in zip(_stacks(qs), outs, lses, douts):
        delta = jnp.einsum("nbkgqd,nbkgqd->nbkgq", out.astype(jnp.float32), dout.astype(jnp.float32))
        acc, dq = jax.lax.scan(block, acc, (first + jnp.arange(q.shape[0]), q, dout.astype(q.dtype), lse, delta))
        dqs.append(dq)
    return tuple(dqs), acc[0].astype(k.dtype), acc[1].astype(v.dtype)


def _zero_cotangent(x):
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.zeros_like(x)
    return np.zeros(x.shape, jax.dtypes.float0)


def _flash(kern: _Kernel, qs, k, v, docs):
    @jax.custom_vjp
    def attention(qs, k, v, docs):
        return _flash_forward(kern, qs, k, v, docs)[0]

    def fwd(qs, k, v, docs):
        outs, lses = _flash_forward(kern, qs, k, v, docs)
        return outs, (qs, k, v, docs, outs, lses)

    def bwd(res, douts):
        qs, k, v, docs, outs, lses = res
        return (*_flash_backward(kern, qs, k, v, docs, outs, lses, douts), jax.tree.map(_zero_cotangent, docs))

    attention.defvjp(fwd, bwd)
    return attention(qs, k, v, docs)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DocumentMask:
    """The packed-documents rule (spec section 3) on token indices of a layout:
    `mask(rows, cols) -> [B, *broadcast(rows, cols)]`, for numpy or jax index arrays.
    A pytree (its arrays are leaves), so kernels can take it across `custom_vjp`."""
    doc: jax.Array      # [B, N] document id per token
    off: jax.Array      # [B, N] position counted from its document's start
    copy: jax.Array     # [N] copy index per token
    variant: str = dataclasses.field(metadata=dict(static=True))
    repeat: int = dataclasses.field(metadata=dict(static=True))
    window: int = dataclasses.field(metadata=dict(static=True))
    chunk: int | None = dataclasses.field(metadata=dict(static=True))

    def __call__(self, rows, cols):
        doc, off, copy = jnp.asarray(self.doc), jnp.asarray(self.off), jnp.asarray(self.copy)
        return document_allowed(self.variant, off[:, rows], copy[rows], doc[:, rows],
                                off[:, cols], copy[cols], doc[:, cols], self.repeat, self.window, self.chunk)


def blocksparse_attention(q, k, v, pattern: BlockPattern, doc_mask=None):
    """Attention over the non-empty tiles of `pattern` only, forward and backward.

    A flash-style kernel in pure JAX (CPU, GPU, TPU; jit, grad, vmap): a `scan` over
    query blocks, and per block a loop over its non-empty key tiles from static tables
    (`_tile_tables`: full tiles unmasked, then partial tiles masked from `allowed`), with
    an online softmax in float32. The program does not grow with the sequence, so compile
    time is bounded. A `custom_vjp` saves only q, k, v, the output and each row's
    log-sum-exp and recomputes every tile's scores in the backward pass: memory O(N), not
    O(allowed pairs). Tiles are `block_q x block_kv`; a ragged last query block runs with
    its own rows only, a ragged last key block is padded and masked.

    `doc_mask(rows, cols) -> [B, ...]` (packed documents: a `DocumentMask`, or any function
    of jax index arrays) is applied on top of the static pattern on every computed tile,
    full tiles included. Rows whose tiles
    are all masked get a uniform (finite) softmax over those tiles' keys; rows of a query
    block without any tile get 0.
    """
    b, n, h, d = q.shape
    kvh = k.shape[2]
    bq, bk = pattern.block_q, pattern.block_kv
    tab = _tile_tables(pattern)
    if doc_mask is None:
        doc_fn, docs = None, ()
    elif isinstance(doc_mask, DocumentMask):
        doc_fn, docs = (lambda dm, r, c: dm(r, c)), doc_mask
    else:   # any callable: hoist the arrays it closes over into explicit arguments
        r0, c0 = jnp.zeros((bq, 1), jnp.int32), jnp.zeros((1, bk), jnp.int32)
        fn, consts = jax.closure_convert(doc_mask, r0, c0)
        doc_fn, docs = (lambda cs, r, c: fn(r, c, *cs)), tuple(consts)
    kern = _Kernel(pattern, tab, doc_fn)

    # Queries: a stack of whole blocks, and a ragged last block as its own stack of one
    # (so a few trailing rows, e.g. prefill's hidden tail, cost only themselves).
    qs, whole = _dot_ready(q * jnp.asarray(d ** -0.5, q.dtype)), n // bq * bq
    stacks = tuple(qs[:, lo:hi].reshape(b, -1, hi - lo if hi - lo < bq else bq, kvh, h // kvh, d)
                   .transpose(1, 0, 3, 4, 2, 5) for lo, hi in ((0, whole), (whole, n)) if hi > lo)
    pad = ((0, 0), (0, tab.nk * bk - n), (0, 0), (0, 0))
    kv = lambda x: jnp.pad(_dot_ready(x), pad).transpose(0, 2, 1, 3)   # noqa: E731  [B, KVH, keys, D]
    outs = _flash(kern, stacks, kv(k), kv(v), docs)
    out = [o.transpose(1, 0, 4, 2, 3, 5).reshape(b, -1, h, d) for o in outs]
    return (out[0] if len(out) == 1 else jnp.concatenate(out, axis=1)).astype(q.dtype)


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
