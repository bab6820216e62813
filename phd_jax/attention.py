"""Attention backends. All consume the same static masks from `phd_jax.masks`.

- `dense`: the literal reference; the full mask and a plain masked softmax.
- `blocksparse`: pure JAX/XLA, flash-style; loops over the non-empty tiles of the
  static block pattern (masks only on partial tiles; PHD's hidden-to-hidden band in
  narrow sub-blocks), recomputes them in a custom backward pass: bounded compile time,
  O(N) memory. Default on CPU and GPU.
- `splash`: the TPU Pallas splash-attention kernel fed with the same mask.
  Default on TPU; elsewhere it runs in Pallas interpret mode (for tests).

Shapes everywhere: q `[B, N, H, D]`, k/v `[B, N, KVH, D]` (grouped-query
attention: H is a multiple of KVH), output `[B, N, H, D]`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import NamedTuple

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
    return DocumentMask(
        jnp.asarray(doc),
        jnp.asarray(off),
        jnp.asarray(layout.tokens[1]),
        config.variant,
        config.repeat,
        config.effective_window,
        config.effective_chunk,
    )


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
        raise ValueError(
            f"attention='splash' with segment_ids cannot count {config.name}'s chunks "
            f"from each document's start: use attention='blocksparse' or 'dense' "
            f"for document masking with phd_cswa"
        )
    return splash_attention(q, k, v, pattern, segment_ids=None if docs is None else docs[0])


def _dot_ready(x):
    """XLA:CPU has no bf16 x bf16 -> f32 dot; upcast there (GPU/TPU keep bf16 inputs)."""
    if jax.default_backend() == "cpu" and x.dtype in (jnp.bfloat16, jnp.float16):
        return x.astype(jnp.float32)
    return x


def _grouped(q, num_kv_heads: int):
    """Scale q and split heads into (kv head, group): `[B, KVH, G, N, D]`."""
    b, n, h, d = q.shape
    q = q * jnp.asarray(d**-0.5, q.dtype)
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
        s = jnp.einsum(f"bkgqd,{kv_layout}->bkgqs", _dot_ready(qg), _dot_ready(k), preferred_element_type=jnp.float32)
        scores.append(s if mask is None else jnp.where(mask, s, MASK_VALUE))
    m = functools.reduce(jnp.maximum, [s.max(axis=-1, keepdims=True) for s in scores])
    m = jax.lax.stop_gradient(m)  # softmax is invariant to the shift
    probs = [jnp.exp(s - m) for s in scores]
    denom = functools.reduce(jnp.add, [p.sum(axis=-1, keepdims=True) for p in probs])
    out = functools.reduce(
        jnp.add,
        [
            jnp.einsum(
                f"bkgqs,{kv_layout}->bkgqd",
                _dot_ready(p.astype(v.dtype)),
                _dot_ready(v),
                preferred_element_type=jnp.float32,
            )
            for p, (_, v, _) in zip(probs, groups)
        ],
    )
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


class _Band(NamedTuple):
    """PHD's hidden-to-hidden keys (own-position copies and the window) for a stack of hidden
    query blocks: each block's rows in sub-blocks of `sub` rows (whole positions), sub-block t
    seeing the `sub + reach` hidden keys that end at its last row. A thin diagonal band costs
    about its own width this way, where whole tiles would cost `block x block` for it."""

    sub: int
    reach: int  # keys before a sub-block's first row it may see: 0 without a window

    @property
    def width(self) -> int:
        return self.sub + self.reach

    @property
    def folds(self) -> int:
        """A block's key windows are `folds` shifted views of its `sub`-row slices."""
        return 1 + -(-self.reach // self.sub)


class _Stack(NamedTuple):
    """`count` query blocks of `rows` rows each from layout row `row0`, scanned as one, with
    their static loop tables (numpy, built once at trace time): per block, its key tiles in two
    lists padded to a fixed length, with counts: full tiles (no static mask) and partial tiles."""

    row0: int
    rows: int
    count: int
    full: np.ndarray  # [count, F] int32 key block indices
    full_count: np.ndarray  # [count] int32
    part: np.ndarray  # [count, P] int32
    part_count: np.ndarray  # [count] int32
    slot: np.ndarray | None  # [count, P] int32 index into `_Tables.masks` (no layout)
    band: _Band | None


class _Tables(NamedTuple):
    """Everything static the kernel loops over. Tiles cover keys `[0, key_limit)`; a layout
    with hidden tokens leaves the keys past it to the stacks' bands. Patterns without a
    `Layout` carry the stacked masks of their partial tiles; with a layout the kernel
    computes a partial tile's mask inside the loop: from the layout's row spans
    (`Layout.spans`, the closed form of `allowed`: one or two compares per score) where it
    has them, else from `allowed` itself."""

    n: int
    nk: int
    key_limit: int  # also where the hidden keys (the bands' keys) begin: T
    stacks: tuple[_Stack, ...]
    masks: np.ndarray | None  # [partial tiles, bq, bk] bool
    band_pad: tuple[int, int]  # zero keys before / after the hidden keys the bands slide over
    spans: np.ndarray | None = None  # [3, N] int32: row r sees keys [0, a) | [b, c)


def _padded(lists: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    count = np.array([len(x) for x in lists], np.int32)
    table = np.zeros((len(lists), max(1, int(count.max(initial=0)))), np.int32)
    for i, x in enumerate(lists):
        table[i, : len(x)] = x
    return table, count


def _split(lo: int, hi: int, rows: int) -> list[tuple[int, int, int]]:
    """`(row0, rows, count)`: whole blocks of `rows` over `[lo, hi)`, then a ragged one (its own
    stack, with only its rows: e.g. prefill's hidden tail costs only itself)."""
    whole = (hi - lo) // rows
    parts = [(lo, rows, whole), (lo + whole * rows, (hi - lo) % rows, 1)]
    return [p for p in parts if p[1] and p[2]]


# Rows per band sub-block: about this many, in whole positions.
BAND_ROWS = 32


def _hidden_tables(pattern: BlockPattern) -> _Tables:
    """Tables of a kernel layout with hidden tokens, from its closed-form row spans (O(N)).

    Rows `[0, T)` (originals) run in blocks of `block_q` over their causal keys. Hidden rows
    run in blocks of the K-1 copies of `block_kv` positions: the K-1 hidden copies of a block
    of positions see the same originals, so their tiles are exactly a causal pattern over
    positions (one partial diagonal tile, as vanilla's) with K-1 times the rows, and larger
    dots. Their hidden keys come from the band."""
    lay, bq, bk = pattern.layout, pattern.block_q, pattern.block_kv
    n, t_orig, k = lay.size, lay.band_start, lay.repeat
    spans = lay.spans()
    a, b, _ = spans
    step = 1 << max(0, (max(1, BAND_ROWS // (k - 1))).bit_length() - 1)  # positions per sub-block
    stacks, pad = [], [0, 0]
    for lo, hi, rows in ((0, t_orig, bq), (t_orig, n, (k - 1) * bk)):
        for row0, rws, cnt in _split(lo, hi, rows):
            span = a[row0 : row0 + rws * cnt].reshape(cnt, rws)
            first, last = span.min(axis=1) // bk, -(-span.max(axis=1) // bk)
            width = max(1, int((last - first).max()))
            full = np.tile(np.arange(max(1, int(first.max())), dtype=np.int32), (cnt, 1))
            part = np.minimum(first[:, None] + np.arange(width), -(-n // bk) - 1).astype(np.int32)
            band = None
            if lo == t_orig:
                # Hidden-order index of each row's sub-block start, and of its first hidden key.
                sub = int((k - 1) * np.gcd(step, rws // (k - 1)))
                r = np.arange(rws * cnt)
                first_key = b[row0 : row0 + rws * cnt] - t_orig
                reach = int(max(0, (row0 - t_orig + r // sub * sub - first_key).max()))
                band = _Band(sub, reach)
                pad = [max(pad[0], reach), max(pad[1], (band.folds - 1) * band.sub - reach)]
            stacks.append(
                _Stack(row0, rws, cnt, full, first.astype(np.int32), part, (last - first).astype(np.int32), None, band)
            )
    return _Tables(n, -(-n // bk), t_orig, tuple(stacks), None, tuple(pad), _spans_table(spans))


@functools.lru_cache(maxsize=32)
def _tile_tables(pattern: BlockPattern) -> _Tables:
    n, bq, bk = pattern.shape[0], pattern.block_q, pattern.block_kv
    lay = pattern.layout
    if lay is not None and lay.band_start is not None and lay.band_start < n:
        return _hidden_tables(pattern)
    blocks = pattern.block_mask.copy()
    if n % bk:  # a ragged last key block is always masked: its padding holds no keys
        blocks[:, -1] = np.where(blocks[:, -1] == FULL, PARTIAL, blocks[:, -1])
    full = [np.flatnonzero(row == FULL).tolist() for row in blocks]
    partial = [np.flatnonzero(row == PARTIAL).tolist() for row in blocks]
    slot = masks = None
    if lay is None:
        slot, tiles = np.zeros((len(partial), max(1, max(map(len, partial)))), np.int32), []
        for i, cols in enumerate(partial):
            q0, q1 = i * bq, min((i + 1) * bq, n)
            for t, j in enumerate(cols):
                k0, k1 = j * bk, min((j + 1) * bk, n)
                tile = np.zeros((bq, bk), bool)
                tile[: q1 - q0, : k1 - k0] = pattern.tile_mask(q0, q1, k0, k1)
                slot[i, t] = len(tiles)
                tiles.append(tile)
        masks = np.stack(tiles) if tiles else np.zeros((1, bq, bk), bool)
    stacks = []
    for row0, rows, cnt in _split(0, n, bq):
        sel = slice(row0 // bq, row0 // bq + cnt)
        tabs = [x[sel] for x in (*_padded(full), *_padded(partial))]
        stacks.append(_Stack(row0, rows, cnt, *tabs, None if slot is None else slot[sel], None))
    return _Tables(
        n, blocks.shape[1], n, tuple(stacks), masks, (0, 0), _spans_table(None if lay is None else lay.spans())
    )


def _spans_table(spans) -> np.ndarray | None:
    """`Layout.spans()` (or None) as the kernel's `[3, N]` int32 table."""
    return None if spans is None else np.stack(spans).astype(np.int32)


def computed_pairs(pattern: BlockPattern) -> int:
    """Query-key pairs `blocksparse` computes for `pattern` (whole tiles and band windows,
    padding included): its attention work, against `allowed`'s pairs."""
    bk = pattern.block_kv
    return sum(
        int((st.full_count + st.part_count).sum()) * st.rows * bk
        + (st.count * st.rows * st.band.width if st.band is not None else 0)
        for st in _tile_tables(pattern).stacks
    )


def _doc_rule(doc_mask, shapes):
    """`(fn(docs, rows, cols) -> [B, *broadcast(rows, cols)], docs)` for a run-time mask: a
    `DocumentMask` as it is, any other callable closure-converted once per index shape, so
    that the arrays it closes over become explicit arguments (`docs`) of the custom_vjp."""
    if doc_mask is None:
        return None, ()
    if isinstance(doc_mask, DocumentMask):
        return (lambda dm, r, c: dm(r, c)), doc_mask
    shapes = list(dict.fromkeys(shapes))
    fns, consts = zip(
        *(jax.closure_convert(doc_mask, jnp.zeros(r, jnp.int32), jnp.zeros(c, jnp.int32)) for r, c in shapes)
    )

    def call(docs, rows, cols):
        at = shapes.index((rows.shape, cols.shape))
        return fns[at](rows, cols, *docs[at])

    return call, tuple(tuple(c) for c in consts)


class _Kernel(NamedTuple):
    """What the loops need besides the arrays: the pattern, its tables and the run-time mask."""

    pattern: BlockPattern
    tables: _Tables
    doc_fn: Callable | None  # (docs, rows, cols) -> [B, *broadcast(rows, cols)]

    def index_shapes(self):
        """Every (rows, cols) shape the kernel evaluates masks on."""
        bk = self.pattern.block_kv
        for st in self.tables.stacks:
            yield (st.rows, 1), (1, bk)
            if st.band is not None:
                yield (st.rows // st.band.sub, st.band.sub, 1), (st.rows // st.band.sub, 1, st.band.width)

    def _masked(self, rows, cols, static, docs):
        """`static` & the documents' mask, broadcastable to the scores `[B, KVH, G, *shape]`,
        materialised once per tile (not re-evaluated per batch row and head), or None."""
        mask = static
        if self.doc_fn is not None:
            n = self.tables.n
            doc = self.doc_fn(docs, jnp.minimum(rows, n - 1), jnp.clip(cols, 0, n - 1))[:, None, None]
            mask = doc if mask is None else mask & doc
        return None if mask is None else jax.lax.optimization_barrier(mask)

    def _spans(self, row0, rows: int):
        """`(a, b, c)`, each `[rows, 1]`, of the query rows `[row0, row0 + rows)`."""
        spans = jax.lax.dynamic_slice_in_dim(jnp.asarray(self.tables.spans), row0, rows, axis=1)
        return tuple(spans[:, :, None])

    def tile_mask(self, st: _Stack, i, t, j, partial: bool, docs):
        """The mask of key tile j (entry t of its list) for query block i of stack `st`."""
        p, tab = self.pattern, self.tables
        row0 = st.row0 + i * st.rows
        rows = row0 + jnp.arange(st.rows, dtype=jnp.int32)[:, None]
        cols = j * p.block_kv + jnp.arange(p.block_kv, dtype=jnp.int32)[None, :]
        static = None
        if partial and tab.spans is not None:
            a, b, c = self._spans(row0, st.rows)
            static = cols < a  # a <= T with a band: originals only; never padding
            if tab.key_limit == tab.n:  # tiles may hold hidden keys (no band)
                static = static | ((cols >= b) & (cols < c))
        elif partial and p.layout is not None:
            static = p.layout.allowed_at(rows, cols) & (cols < tab.key_limit)
        elif partial:
            static = jnp.asarray(tab.masks)[jnp.asarray(st.slot)[i, t]][: st.rows]
        return self._masked(rows, cols, static, docs)

    def band_mask(self, st: _Stack, i, docs):
        """`[nsub, sub, width]` mask of query block i's band (sub-blocks over their key windows)."""
        bd = st.band
        nsub = st.rows // bd.sub
        row0 = st.row0 + i * st.rows
        rows = row0 + jnp.arange(st.rows, dtype=jnp.int32).reshape(nsub, bd.sub, 1)
        cols = (
            row0
            - bd.reach
            + bd.sub * jnp.arange(nsub, dtype=jnp.int32)[:, None, None]
            + jnp.arange(bd.width, dtype=jnp.int32)[None, None, :]
        )
        _, b, c = (x.reshape(nsub, bd.sub, 1) for x in self._spans(row0, st.rows))
        static = (cols >= b) & (cols < c)  # T <= b, c <= N: hidden keys only
        return self._masked(rows, cols, static, docs)

    def band_start(self, st: _Stack, i):
        """Where block i's key window starts in the padded hidden keys."""
        return self.tables.band_pad[0] - st.band.reach + st.row0 - self.tables.key_limit + i * st.rows

    def tiles(self, st: _Stack, i, body, carry, docs):
        """Run `body(key block, mask, carry)` over query block i's full tiles, then its
        partial tiles (tables without any entry are skipped at trace time)."""
        for partial, table, count in ((False, st.full, st.full_count), (True, st.part, st.part_count)):
            if not count.any():
                continue
            table = jnp.asarray(table)

            def step(t, c, partial=partial, table=table):
                j = table[i, t]
                return body(j, self.tile_mask(st, i, t, j, partial, docs), c)

            carry = jax.lax.fori_loop(0, jnp.asarray(count)[i], step, carry)
        return carry


def _scores(qi, kj, mask):
    s = jnp.einsum("bkgqd,bksd->bkgqs", qi, kj, preferred_element_type=jnp.float32)
    return s if mask is None else jnp.where(mask, s, MASK_VALUE)


def _tile(x, j, bk: int):
    """Key tile j `[B, KVH, bk, D]` of `[B, KVH, keys, D]`."""
    return jax.lax.dynamic_slice_in_dim(x, j * bk, bk, axis=2)


def _windows(x, start, bd: _Band, nsub: int):
    """Each sub-block's `width` keys `[B, KVH, nsub, width, D]`, from one slice of the padded
    hidden keys `x` at `start` (overlapping windows, gathered as `folds` shifted views)."""
    b, kvh, _, d = x.shape
    w = jax.lax.dynamic_slice_in_dim(x, start, (nsub + bd.folds - 1) * bd.sub, axis=2)
    w = w.reshape(b, kvh, nsub + bd.folds - 1, bd.sub, d)
    return jnp.concatenate([w[:, :, f : f + nsub] for f in range(bd.folds)], axis=3)[:, :, :, : bd.width]


def _fold(x, bd: _Band):
    """The adjoint of `_windows`: sub-blocks' key gradients `[B, KVH, nsub, width, D]` summed
    into the one slice they came from."""
    b, kvh, nsub, _, d = x.shape
    m, s = bd.folds, bd.sub
    x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, m * s - bd.width), (0, 0)))
    return sum(
        jnp.pad(
            x[:, :, :, f * s : (f + 1) * s].reshape(b, kvh, nsub * s, d),
            ((0, 0), (0, 0), (f * s, (m - 1 - f) * s), (0, 0)),
        )
        for f in range(m)
    )


def _online(c, s, pv):
    """One online-softmax step: carry `(m, l, o)`, masked scores `s [..., rows, keys]`,
    `pv(p) -> [..., rows, D]`."""
    m, l, o = c
    m_new = jnp.maximum(m, s.max(axis=-1))
    alpha, p = jnp.exp(m - m_new), jnp.exp(s - m_new[..., None])
    return m_new, alpha * l + p.sum(axis=-1), alpha[..., None] * o + pv(p)


def _sub_blocks(x, nsub: int):
    """`[B, KVH, G, rows, ...]` -> `[B, KVH, G, nsub, rows / nsub, ...]`."""
    return x.reshape(*x.shape[:3], nsub, x.shape[3] // nsub, *x.shape[4:])


def _flash_forward(kern: _Kernel, qs, kv, docs):
    """qs: per stack its query blocks `[blocks, B, KVH, G, rows, D]` (scaled); kv: k, v
    `[B, KVH, nk * bk, D]` and the padded hidden keys/values of the band (or None) -> per stack
    the output (like it) and the row log-sum-exp `[blocks, B, KVH, G, rows]`, with an online
    softmax over each block's band and tiles."""
    k, v, kh, vh = kv
    bk = kern.pattern.block_kv
    outs = []
    for st, q in zip(kern.tables.stacks, qs):

        def block(_, x, st=st):
            i, qi = x
            m = jnp.full(qi.shape[:-1], -jnp.inf, jnp.float32)
            c = (m, jnp.zeros_like(m), jnp.zeros(qi.shape, jnp.float32))
            if st.band is not None:
                nsub, start = st.rows // st.band.sub, kern.band_start(st, i)
                kw, vw = _windows(kh, start, st.band, nsub), _windows(vh, start, st.band, nsub)
                s = jnp.einsum("bkgtqd,bktsd->bkgtqs", _sub_blocks(qi, nsub), kw, preferred_element_type=jnp.float32)
                s = jnp.where(kern.band_mask(st, i, docs), s, MASK_VALUE).reshape(*qi.shape[:-1], -1)
                c = _online(
                    c,
                    s,
                    lambda p: jnp.einsum(
                        "bkgtqs,bktsd->bkgtqd",
                        _sub_blocks(p, nsub).astype(vw.dtype),
                        vw,
                        preferred_element_type=jnp.float32,
                    ).reshape(qi.shape),
                )

            def body(j, mask, c):
                return _online(
                    c,
                    _scores(qi, _tile(k, j, bk), mask),
                    lambda p: jnp.einsum(
                        "bkgqs,bksd->bkgqd", p.astype(v.dtype), _tile(v, j, bk), preferred_element_type=jnp.float32
                    ),
                )

            m, l, o = kern.tiles(st, i, body, c, docs)
            seen = l > 0  # rows of a block without any tile get 0
            l = jnp.where(seen, l, 1.0)
            return None, ((o / l[..., None]).astype(qi.dtype), jnp.where(seen, m + jnp.log(l), 0.0))

        outs.append(jax.lax.scan(block, None, (jnp.arange(st.count), q))[1])
    return tuple(o for o, _ in outs), tuple(lse for _, lse in outs)


def _flash_backward(kern: _Kernel, qs, kv, docs, outs, lses, douts):
    """Recompute each tile's probabilities from the saved log-sum-exp: dq per query block,
    dk/dv (and the band's, over the padded hidden keys) accumulated in place (float32). O(N) memory."""
    k, v, kh, vh = kv
    bk = kern.pattern.block_kv

    def add_at(acc, x, start):
        return jax.lax.dynamic_update_slice_in_dim(
            acc, jax.lax.dynamic_slice_in_dim(acc, start, x.shape[2], axis=2) + x, start, axis=2
        )

    def grads(qi, di, lse_i, delta_i, s, kj, vj, mask, pv_dims):
        """dq, dk, dv of one set of scores `s` (before masking) over keys kj/vj."""
        q_, s_, k_ = pv_dims
        p = jnp.exp(s - lse_i[..., None])
        dp = jnp.einsum(f"{q_},{k_}->{s_}", di, vj, preferred_element_type=jnp.float32)
        ds = p * (dp - delta_i[..., None])
        if mask is not None:
            ds = jnp.where(mask, ds, 0.0)
        dq = jnp.einsum(f"{s_},{k_}->{q_}", ds.astype(kj.dtype), kj, preferred_element_type=jnp.float32)
        dk = jnp.einsum(f"{s_},{q_}->{k_}", ds.astype(qi.dtype), qi, preferred_element_type=jnp.float32)
        dv = jnp.einsum(f"{s_},{q_}->{k_}", p.astype(di.dtype), di, preferred_element_type=jnp.float32)
        return dq, dk, dv

    acc = tuple(jnp.zeros(x.shape, jnp.float32) for x in (k, v) + ((kh, vh) if kh is not None else ()))
    dqs = []
    for st, q, out, lse, dout in zip(kern.tables.stacks, qs, outs, lses, douts):

        def block(acc, x, st=st):
            i, qi, di, lse_i, delta_i = x
            dq = jnp.zeros(qi.shape, jnp.float32)
            if st.band is not None:
                nsub, start = st.rows // st.band.sub, kern.band_start(st, i)
                kw, vw = _windows(kh, start, st.band, nsub), _windows(vh, start, st.band, nsub)
                mask = kern.band_mask(st, i, docs)
                qsub = _sub_blocks(qi, nsub)
                s = jnp.where(
                    mask, jnp.einsum("bkgtqd,bktsd->bkgtqs", qsub, kw, preferred_element_type=jnp.float32), MASK_VALUE
                )
                dq_b, dkw, dvw = grads(
                    qsub,
                    _sub_blocks(di, nsub),
                    _sub_blocks(lse_i, nsub),
                    _sub_blocks(delta_i, nsub),
                    s,
                    kw,
                    vw,
                    mask,
                    ("bkgtqd", "bkgtqs", "bktsd"),
                )
                dq = dq + dq_b.reshape(qi.shape)
                acc = (*acc[:2], add_at(acc[2], _fold(dkw, st.band), start), add_at(acc[3], _fold(dvw, st.band), start))

            def body(j, mask, c):
                dq, *acc = c
                kj, vj = _tile(k, j, bk), _tile(v, j, bk)
                dq_j, dk_j, dv_j = grads(
                    qi, di, lse_i, delta_i, _scores(qi, kj, mask), kj, vj, mask, ("bkgqd", "bkgqs", "bksd")
                )
                return (dq + dq_j, add_at(acc[0], dk_j, j * bk), add_at(acc[1], dv_j, j * bk), *acc[2:])

            dq, *acc = kern.tiles(st, i, body, (dq, *acc), docs)
            return tuple(acc), dq.astype(qi.dtype)

        delta = jnp.einsum("nbkgqd,nbkgqd->nbkgq", out.astype(jnp.float32), dout.astype(jnp.float32))
        acc, dq = jax.lax.scan(block, acc, (jnp.arange(st.count), q, dout.astype(q.dtype), lse, delta))
        dqs.append(dq)
    dk, dv = acc[0].astype(k.dtype), acc[1].astype(v.dtype)
    dkh = dvh = None
    if kh is not None:
        dkh, dvh = acc[2].astype(kh.dtype), acc[3].astype(vh.dtype)
    return tuple(dqs), (dk, dv, dkh, dvh)


def _zero_cotangent(x):
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.zeros_like(x)
    return np.zeros(x.shape, jax.dtypes.float0)


def _flash(kern: _Kernel, qs, kv, docs):
    @jax.custom_vjp
    def attention(qs, kv, docs):
        return _flash_forward(kern, qs, kv, docs)[0]

    def fwd(qs, kv, docs):
        outs, lses = _flash_forward(kern, qs, kv, docs)
        return outs, (qs, kv, docs, outs, lses)

    def bwd(res, douts):
        qs, kv, docs, outs, lses = res
        return (*_flash_backward(kern, qs, kv, docs, outs, lses, douts), jax.tree.map(_zero_cotangent, docs))

    attention.defvjp(fwd, bwd)
    return attention(qs, kv, docs)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DocumentMask:
    """The packed-documents rule (spec section 3) on token indices of a layout:
    `mask(rows, cols) -> [B, *broadcast(rows, cols)]`, for numpy or jax index arrays.
    A pytree (its arrays are leaves), so kernels can take it across `custom_vjp`."""

    doc: jax.Array  # [B, N] document id per token
    off: jax.Array  # [B, N] position counted from its document's start
    copy: jax.Array  # [N] copy index per token
    variant: str = dataclasses.field(metadata=dict(static=True))
    repeat: int = dataclasses.field(metadata=dict(static=True))
    window: int = dataclasses.field(metadata=dict(static=True))
    chunk: int | None = dataclasses.field(metadata=dict(static=True))

    def __call__(self, rows, cols):
        doc, off, copy = jnp.asarray(self.doc), jnp.asarray(self.off), jnp.asarray(self.copy)
        return document_allowed(
            self.variant,
            off[:, rows],
            copy[rows],
            doc[:, rows],
            off[:, cols],
            copy[cols],
            doc[:, cols],
            self.repeat,
            self.window,
            self.chunk,
        )


def blocksparse_attention(q, k, v, pattern: BlockPattern, doc_mask=None):
    """Attention over the non-empty tiles of `pattern` only, forward and backward.

    A flash-style kernel in pure JAX (CPU, GPU, TPU; jit, grad, vmap): a `scan` over
    query blocks, and per block a loop over its non-empty key tiles from static tables
    (`_tile_tables`: full tiles unmasked, then partial tiles masked from `Layout.spans`, the
    closed form of `allowed`), with an online softmax in float32. The program does not grow
    with the sequence, so compile time is bounded. A `custom_vjp` saves only q, k, v, the
    output and each row's log-sum-exp and recomputes every tile's scores in the backward
    pass: memory O(N), not O(allowed pairs). Tiles are `block_q x block_kv`; a ragged last
    query block runs with its own rows only, a ragged last key block is padded and masked.

    In a kernel layout with hidden tokens, hidden rows run in blocks of the K-1 copies of
    `block_kv` positions: over the originals that is a causal pattern over positions (one
    partial tile per block, as vanilla's), and their thin hidden-to-hidden band runs in
    sub-blocks of about `BAND_ROWS` rows over their own key windows, so that every PHD
    variant computes about as many pairs per allowed pair as vanilla (`computed_pairs`).

    `doc_mask(rows, cols) -> [B, ...]` (packed documents: a `DocumentMask`, or any function
    of jax index arrays) is applied on top of the static pattern on every computed tile,
    full tiles included. Rows whose tiles
    are all masked get a uniform (finite) softmax over those tiles' keys; rows of a query
    block without any tile get 0.
    """
    b, n, h, d = q.shape
    kvh, bk = k.shape[2], pattern.block_kv
    tab = _tile_tables(pattern)
    kern = _Kernel(pattern, tab, None)
    doc_fn, docs = _doc_rule(doc_mask, list(kern.index_shapes()))
    kern = kern._replace(doc_fn=doc_fn)

    # Queries: per stack `[blocks, B, KVH, G, rows, D]`; keys `[B, KVH, keys, D]`, and the
    # hidden keys the bands slide over, zero-padded at both ends.
    qs = _dot_ready(q * jnp.asarray(d**-0.5, q.dtype))
    stacks = tuple(
        qs[:, st.row0 : st.row0 + st.rows * st.count]
        .reshape(b, st.count, st.rows, kvh, h // kvh, d)
        .transpose(1, 0, 3, 4, 2, 5)
        for st in tab.stacks
    )
    pad = ((0, 0), (0, tab.nk * bk - n), (0, 0), (0, 0))
    k, v = (jnp.pad(_dot_ready(x), pad).transpose(0, 2, 1, 3) for x in (k, v))
    kh = vh = None
    if any(st.band is not None for st in tab.stacks):
        kh, vh = (jnp.pad(x[:, :, tab.key_limit : n], ((0, 0), (0, 0), tab.band_pad, (0, 0))) for x in (k, v))
    outs = _flash(kern, stacks, (k, v, kh, vh), docs)
    out = [o.transpose(1, 0, 4, 2, 3, 5).reshape(b, -1, h, d) for o in outs]
    return (out[0] if len(out) == 1 else jnp.concatenate(out, axis=1)).astype(q.dtype)


def splash_sizes(pattern: BlockPattern):
    bq, bk = pattern.block_q, pattern.block_kv
    if bq % 128 or bk % 128:
        raise ValueError(
            f"splash attention needs block_q and block_kv that are multiples of 128, got block_q={bq}, block_kv={bk}"
        )
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

        def mask_function(q, k):  # numpy on the host, jax in the kernel: operators only
            inside = (q < n) & (k < n)
            return (inside & layout.allowed_at(q, k)) | (~inside & (q == k))

        super().__init__((n_pad, n_pad), mask_function)
        self._bq, self._bk = pattern.block_q, pattern.block_kv
        # Tile classes of whole tiles inside the pattern (row-major bytes: fast lookups).
        whole = pattern.block_mask[: n // self._bq, : n // self._bk]
        self._rows = [row.tobytes() for row in whole]
        self._tiles = {}
        for status, value in ((EMPTY, False), (FULL, True)):
            tile = np.full((self._bq, self._bk), value).view(_UniformTile)
            tile.value, tile.flags.writeable = value, False
            self._tiles[status] = tile

    def __getitem__(self, idx) -> np.ndarray:
        try:  # splash's own reads: whole tiles, `[i*bq:(i+1)*bq, j*bk:(j+1)*bk]`
            q, k = idx
            i, r = divmod(q.start, self._bq)
            j, c = divmod(k.start, self._bk)
            if (
                r
                or c
                or q.start < 0
                or k.start < 0
                or q.step not in (None, 1)
                or k.step not in (None, 1)
                or q.stop - q.start != self._bq
                or k.stop - k.start != self._bk
            ):
                raise ValueError
            tile = self._tiles.get(self._rows[i][j])
        except (TypeError, ValueError, IndexError, AttributeError):
            tile = None
        return tile if tile is not None else super().__getitem__(idx)

    def __eq__(self, other: object):
        return type(other) is type(self) and self.shape == other.shape and self.pattern.layout == other.pattern.layout

    def __hash__(self):
        return hash((type(self), self.shape, self.pattern.layout))


@functools.lru_cache(maxsize=8)
def _splash_mask(pattern: BlockPattern):
    if pattern.layout is None:
        raise ValueError(
            "splash attention needs a pattern built from a Layout (Layout.pattern), "
            "whose mask it can compute inside the kernel"
        )
    return SplashPatternMask(pattern, splash_sizes(pattern)[2])


def _splash_kernel(pattern: BlockPattern, num_heads: int, interpret: bool):
    # Built per trace: the kernel holds jax arrays, which must not outlive a trace.
    # The expensive numpy mask processing is cached inside splash itself.
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    bq, bk, _ = splash_sizes(pattern)
    mask = _splash_mask(pattern)
    sizes = sa.BlockSizes(
        block_q=bq,
        block_kv=bk,
        block_kv_compute=bk,
        block_q_dkv=bq,
        block_kv_dkv=bk,
        block_kv_dkv_compute=bk,
        block_q_dq=bq,
        block_kv_dq=bk,
    )
    heads = sa.MultiHeadMask([mask] * num_heads)
    return sa.make_splash_mha(heads, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


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
    qs = q * jnp.asarray(d**-0.5, q.dtype)
    if segment_ids is None:
        out = jax.vmap(kernel)(pad(qs), pad(k), pad(v))
    else:
        from jax.experimental.pallas.ops.tpu.splash_attention import SegmentIds

        seg = jnp.pad(jnp.asarray(segment_ids, jnp.int32), ((0, 0), (0, n_pad - n)), constant_values=-1)
        out = jax.vmap(lambda q_, k_, v_, s_: kernel(q_, k_, v_, segment_ids=SegmentIds(q=s_, kv=s_)))(
            pad(qs), pad(k), pad(v), seg
        )
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
    new = [(new_k.transpose(0, 2, 1, 3), new_v.transpose(0, 2, 1, 3), m[..., s + w :])]
    groups = [(cache.k, cache.v, m[..., :s])] + new
    if w:
        groups.insert(1, (cache.window_k, cache.window_v, m[..., s : s + w]))
    return _ungrouped(combine(partial_attention(qg, groups, "bksd")), q.dtype)
