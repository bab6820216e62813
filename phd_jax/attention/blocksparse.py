"""`blocksparse`: a flash-style attention kernel over a static block pattern, in pure JAX.

The static plan (which tiles, which band) is `phd_jax.attention.tables`; this module runs it:
a `scan` over query blocks, per block a loop over its key tiles with an online softmax, and a
`custom_vjp` that recomputes the tiles in the backward pass (memory O(N)). A run-time mask
(packed documents: `SegmentMask`) goes on top of the static one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from phd_jax.attention.dense import MASK_VALUE, dot_ready
from phd_jax.attention.tables import Band, Stack, Tables, tile_tables
from phd_jax.masks import BlockPattern, segment_allowed


def _runtime_rule(segment_mask, shapes):
    """`(fn(mask_args, rows, cols) -> [B, *broadcast(rows, cols)], mask_args)` for a run-time mask: a
    `SegmentMask` as it is, any other callable closure-converted once per index shape, so
    that the arrays it closes over become explicit arguments (`mask_args`) of the custom_vjp."""
    if segment_mask is None:
        return None, ()
    if isinstance(segment_mask, SegmentMask):
        return (lambda mask, rows, cols: mask(rows, cols)), segment_mask
    shapes = list(dict.fromkeys(shapes))
    fns, consts = zip(
        *(jax.closure_convert(segment_mask, jnp.zeros(r, jnp.int32), jnp.zeros(c, jnp.int32)) for r, c in shapes)
    )

    def call(mask_args, rows, cols):
        at = shapes.index((rows.shape, cols.shape))
        return fns[at](rows, cols, *mask_args[at])

    return call, tuple(tuple(c) for c in consts)


class _Kernel(NamedTuple):
    """What the loops need besides the arrays: the pattern, its tables and the run-time mask."""

    pattern: BlockPattern
    tables: Tables
    mask_fn: Callable | None  # (mask_args, rows, cols) -> [B, *broadcast(rows, cols)]

    def index_shapes(self):
        """Every (rows, cols) shape the kernel evaluates masks on."""
        bk = self.pattern.block_kv
        for st in self.tables.stacks:
            yield (st.rows, 1), (1, bk)
            if st.band is not None:
                yield (st.rows // st.band.sub, st.band.sub, 1), (st.rows // st.band.sub, 1, st.band.width)

    def _masked(self, rows, cols, static, mask_args):
        """`static` & the run-time mask, broadcastable to the scores `[B, KVH, G, *shape]`,
        materialised once per tile (not re-evaluated per batch row and head), or None."""
        mask = static
        if self.mask_fn is not None:
            n = self.tables.n
            runtime = self.mask_fn(mask_args, jnp.minimum(rows, n - 1), jnp.clip(cols, 0, n - 1))[:, None, None]
            mask = runtime if mask is None else mask & runtime
        return None if mask is None else jax.lax.optimization_barrier(mask)

    def _spans(self, row0, rows: int):
        """`(a, b, c)`, each `[rows, 1]`, of the query rows `[row0, row0 + rows)`."""
        spans = jax.lax.dynamic_slice_in_dim(jnp.asarray(self.tables.spans), row0, rows, axis=1)
        return tuple(spans[:, :, None])

    def tile_mask(self, st: Stack, i, t, j, partial: bool, mask_args):
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
        return self._masked(rows, cols, static, mask_args)

    def band_mask(self, st: Stack, i, mask_args):
        """`[nsub, sub, width]` mask of query block i's band (sub-blocks over their key windows)."""
        band = st.band
        nsub = st.rows // band.sub
        row0 = st.row0 + i * st.rows
        rows = row0 + jnp.arange(st.rows, dtype=jnp.int32).reshape(nsub, band.sub, 1)
        cols = (
            row0
            - band.reach
            + band.sub * jnp.arange(nsub, dtype=jnp.int32)[:, None, None]
            + jnp.arange(band.width, dtype=jnp.int32)[None, None, :]
        )
        _, b, c = (x.reshape(nsub, band.sub, 1) for x in self._spans(row0, st.rows))
        static = (cols >= b) & (cols < c)  # T <= b, c <= N: hidden keys only
        return self._masked(rows, cols, static, mask_args)

    def band_start(self, st: Stack, i):
        """Where block i's key window starts in the padded hidden keys."""
        return self.tables.band_pad[0] - st.band.reach + st.row0 - self.tables.key_limit + i * st.rows

    def tiles(self, st: Stack, i, body, carry, mask_args):
        """Run `body(key block, mask, carry)` over query block i's full tiles, then its
        partial tiles (tables without any entry are skipped at trace time)."""
        for partial, table, count in ((False, st.full, st.full_count), (True, st.part, st.part_count)):
            if not count.any():
                continue
            table = jnp.asarray(table)

            def step(t, carry, partial=partial, table=table):
                j = table[i, t]
                return body(j, self.tile_mask(st, i, t, j, partial, mask_args), carry)

            carry = jax.lax.fori_loop(0, jnp.asarray(count)[i], step, carry)
        return carry


def _scores(q_block, k_tile, mask):
    scores = jnp.einsum("bkgqd,bksd->bkgqs", q_block, k_tile, preferred_element_type=jnp.float32)
    return scores if mask is None else jnp.where(mask, scores, MASK_VALUE)


def _tile(x, j, bk: int):
    """Key tile j `[B, KVH, bk, D]` of `[B, KVH, keys, D]`."""
    return jax.lax.dynamic_slice_in_dim(x, j * bk, bk, axis=2)


def _windows(x, start, band: Band, nsub: int):
    """Each sub-block's `width` keys `[B, KVH, nsub, width, D]`, from one slice of the padded
    hidden keys `x` at `start` (overlapping windows, gathered as `folds` shifted views)."""
    b, kvh, _, d = x.shape
    slices = jax.lax.dynamic_slice_in_dim(x, start, (nsub + band.folds - 1) * band.sub, axis=2)
    slices = slices.reshape(b, kvh, nsub + band.folds - 1, band.sub, d)
    return jnp.concatenate([slices[:, :, f : f + nsub] for f in range(band.folds)], axis=3)[:, :, :, : band.width]


def _fold(x, band: Band):
    """The adjoint of `_windows`: sub-blocks' key gradients `[B, KVH, nsub, width, D]` summed
    into the one slice they came from."""
    b, kvh, nsub, _, d = x.shape
    folds, sub = band.folds, band.sub
    x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, folds * sub - band.width), (0, 0)))
    return sum(
        jnp.pad(
            x[:, :, :, f * sub : (f + 1) * sub].reshape(b, kvh, nsub * sub, d),
            ((0, 0), (0, 0), (f * sub, (folds - 1 - f) * sub), (0, 0)),
        )
        for f in range(folds)
    )


def _online(carry, scores, weighted_values):
    """One online-softmax step: carry `(m, l, o)` (row max, sum of exp, unnormalised output),
    masked scores `[..., rows, keys]`, `weighted_values(p) -> [..., rows, D]` (p @ v)."""
    m, l, o = carry
    m_new = jnp.maximum(m, scores.max(axis=-1))
    alpha, p = jnp.exp(m - m_new), jnp.exp(scores - m_new[..., None])
    return m_new, alpha * l + p.sum(axis=-1), alpha[..., None] * o + weighted_values(p)


def _sub_blocks(x, nsub: int):
    """`[B, KVH, G, rows, ...]` -> `[B, KVH, G, nsub, rows / nsub, ...]`."""
    return x.reshape(*x.shape[:3], nsub, x.shape[3] // nsub, *x.shape[4:])


def _flash_forward(kern: _Kernel, q_stacks, keys_values, mask_args):
    """q_stacks: per stack its query blocks `[blocks, B, KVH, G, rows, D]` (scaled);
    keys_values: k, v `[B, KVH, nk * bk, D]` and the padded hidden keys/values of the band (or
    None) -> per stack the output (like its queries) and the row log-sum-exp
    `[blocks, B, KVH, G, rows]`, with an online softmax over each block's band and tiles."""
    k, v, band_k, band_v = keys_values
    bk = kern.pattern.block_kv
    outs = []
    for st, q_blocks in zip(kern.tables.stacks, q_stacks):

        def block(_, x, st=st):
            i, q_block = x
            m = jnp.full(q_block.shape[:-1], -jnp.inf, jnp.float32)
            carry = (m, jnp.zeros_like(m), jnp.zeros(q_block.shape, jnp.float32))
            if st.band is not None:
                nsub, start = st.rows // st.band.sub, kern.band_start(st, i)
                window_k, window_v = _windows(band_k, start, st.band, nsub), _windows(band_v, start, st.band, nsub)
                q_sub = _sub_blocks(q_block, nsub)
                scores = jnp.einsum("bkgtqd,bktsd->bkgtqs", q_sub, window_k, preferred_element_type=jnp.float32)
                scores = jnp.where(kern.band_mask(st, i, mask_args), scores, MASK_VALUE)
                carry = _online(
                    carry,
                    scores.reshape(*q_block.shape[:-1], -1),
                    lambda p: jnp.einsum(
                        "bkgtqs,bktsd->bkgtqd",
                        _sub_blocks(p, nsub).astype(window_v.dtype),
                        window_v,
                        preferred_element_type=jnp.float32,
                    ).reshape(q_block.shape),
                )

            def body(j, mask, carry):
                v_tile = _tile(v, j, bk)
                return _online(
                    carry,
                    _scores(q_block, _tile(k, j, bk), mask),
                    lambda p: jnp.einsum(
                        "bkgqs,bksd->bkgqd", p.astype(v.dtype), v_tile, preferred_element_type=jnp.float32
                    ),
                )

            m, l, o = kern.tiles(st, i, body, carry, mask_args)
            seen = l > 0  # rows of a block without any tile get 0
            l = jnp.where(seen, l, 1.0)
            return None, ((o / l[..., None]).astype(q_block.dtype), jnp.where(seen, m + jnp.log(l), 0.0))

        outs.append(jax.lax.scan(block, None, (jnp.arange(st.count), q_blocks))[1])
    return tuple(o for o, _ in outs), tuple(lse for _, lse in outs)


def _flash_backward(kern: _Kernel, q_stacks, keys_values, mask_args, outs, lses, douts):
    """Recompute each tile's probabilities from the saved log-sum-exp: dq per query block,
    dk/dv (and the band's, over the padded hidden keys) accumulated in place (float32). O(N) memory."""
    k, v, band_k, band_v = keys_values
    bk = kern.pattern.block_kv

    def add_at(acc, x, start):
        return jax.lax.dynamic_update_slice_in_dim(
            acc, jax.lax.dynamic_slice_in_dim(acc, start, x.shape[2], axis=2) + x, start, axis=2
        )

    def grads(q_block, dout, lse, delta, scores, keys, values, mask, dims):
        """dq, dk, dv of one set of scores (before masking) over `keys`/`values`; `dims`: the
        einsum subscripts of queries, scores and keys."""
        q_, s_, k_ = dims
        p = jnp.exp(scores - lse[..., None])
        dp = jnp.einsum(f"{q_},{k_}->{s_}", dout, values, preferred_element_type=jnp.float32)
        ds = p * (dp - delta[..., None])
        if mask is not None:
            ds = jnp.where(mask, ds, 0.0)
        dq = jnp.einsum(f"{s_},{k_}->{q_}", ds.astype(keys.dtype), keys, preferred_element_type=jnp.float32)
        dk = jnp.einsum(f"{s_},{q_}->{k_}", ds.astype(q_block.dtype), q_block, preferred_element_type=jnp.float32)
        dv = jnp.einsum(f"{s_},{q_}->{k_}", p.astype(dout.dtype), dout, preferred_element_type=jnp.float32)
        return dq, dk, dv

    # Accumulators (float32): dk, dv over the tiles' keys, and over the band's padded hidden keys.
    acc = tuple(jnp.zeros(x.shape, jnp.float32) for x in (k, v) + ((band_k, band_v) if band_k is not None else ()))
    dqs = []
    for st, q_blocks, out, lse_blocks, dout_blocks in zip(kern.tables.stacks, q_stacks, outs, lses, douts):

        def block(acc, x, st=st):
            i, q_block, dout, lse, delta = x
            dq = jnp.zeros(q_block.shape, jnp.float32)
            if st.band is not None:
                nsub, start = st.rows // st.band.sub, kern.band_start(st, i)
                window_k, window_v = _windows(band_k, start, st.band, nsub), _windows(band_v, start, st.band, nsub)
                mask = kern.band_mask(st, i, mask_args)
                q_sub = _sub_blocks(q_block, nsub)
                scores = jnp.einsum("bkgtqd,bktsd->bkgtqs", q_sub, window_k, preferred_element_type=jnp.float32)
                dq_band, dk_band, dv_band = grads(
                    q_sub,
                    _sub_blocks(dout, nsub),
                    _sub_blocks(lse, nsub),
                    _sub_blocks(delta, nsub),
                    jnp.where(mask, scores, MASK_VALUE),
                    window_k,
                    window_v,
                    mask,
                    ("bkgtqd", "bkgtqs", "bktsd"),
                )
                dq = dq + dq_band.reshape(q_block.shape)
                dk_band, dv_band = _fold(dk_band, st.band), _fold(dv_band, st.band)
                acc = (*acc[:2], add_at(acc[2], dk_band, start), add_at(acc[3], dv_band, start))

            def body(j, mask, carry):
                dq, *acc = carry
                k_tile, v_tile = _tile(k, j, bk), _tile(v, j, bk)
                scores = _scores(q_block, k_tile, mask)
                dq_j, dk_j, dv_j = grads(
                    q_block, dout, lse, delta, scores, k_tile, v_tile, mask, ("bkgqd", "bkgqs", "bksd")
                )
                return (dq + dq_j, add_at(acc[0], dk_j, j * bk), add_at(acc[1], dv_j, j * bk), *acc[2:])

            dq, *acc = kern.tiles(st, i, body, (dq, *acc), mask_args)
            return tuple(acc), dq.astype(q_block.dtype)

        delta = jnp.einsum("nbkgqd,nbkgqd->nbkgq", out.astype(jnp.float32), dout_blocks.astype(jnp.float32))
        xs = (jnp.arange(st.count), q_blocks, dout_blocks.astype(q_blocks.dtype), lse_blocks, delta)
        acc, dq = jax.lax.scan(block, acc, xs)
        dqs.append(dq)
    dk, dv = acc[0].astype(k.dtype), acc[1].astype(v.dtype)
    dk_band = dv_band = None
    if band_k is not None:
        dk_band, dv_band = acc[2].astype(band_k.dtype), acc[3].astype(band_v.dtype)
    return tuple(dqs), (dk, dv, dk_band, dv_band)


def _zero_cotangent(x):
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.zeros_like(x)
    return np.zeros(x.shape, jax.dtypes.float0)


def _flash(kern: _Kernel, q_stacks, keys_values, mask_args):
    @jax.custom_vjp
    def attention(q_stacks, keys_values, mask_args):
        return _flash_forward(kern, q_stacks, keys_values, mask_args)[0]

    def fwd(q_stacks, keys_values, mask_args):
        outs, lses = _flash_forward(kern, q_stacks, keys_values, mask_args)
        return outs, (q_stacks, keys_values, mask_args, outs, lses)

    def bwd(saved, douts):
        q_stacks, keys_values, mask_args, outs, lses = saved
        grads = _flash_backward(kern, q_stacks, keys_values, mask_args, outs, lses, douts)
        return (*grads, jax.tree.map(_zero_cotangent, mask_args))

    attention.defvjp(fwd, bwd)
    return attention(q_stacks, keys_values, mask_args)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SegmentMask:
    """The packed-documents rule (docs/spec.md section 3) on token indices of a layout:
    `mask(rows, cols) -> [B, *broadcast(rows, cols)]`, for numpy or jax index arrays.
    A pytree (its arrays are leaves), so kernels can take it across `custom_vjp`.
    (Called `DocumentMask`, with fields `doc` and `off`, before 0.2.)"""

    segment_ids: jax.Array  # [B, N] segment (document) id per token
    offsets: jax.Array  # [B, N] position counted from its segment's start
    copy: jax.Array  # [N] copy index per token
    variant: str = dataclasses.field(metadata=dict(static=True))
    repeat: int = dataclasses.field(metadata=dict(static=True))
    window: int = dataclasses.field(metadata=dict(static=True))
    chunk: int | None = dataclasses.field(metadata=dict(static=True))

    def __call__(self, rows, cols):
        seg, off, copy = jnp.asarray(self.segment_ids), jnp.asarray(self.offsets), jnp.asarray(self.copy)
        return segment_allowed(
            self.variant,
            off[:, rows],
            copy[rows],
            seg[:, rows],
            off[:, cols],
            copy[cols],
            seg[:, cols],
            self.repeat,
            self.window,
            self.chunk,
        )


def blocksparse_attention(q, k, v, pattern: BlockPattern, segment_mask=None):
    """Attention over the non-empty tiles of `pattern` only, forward and backward.

    A flash-style kernel in pure JAX (CPU, GPU, TPU; jit, grad, vmap): a `scan` over
    query blocks, and per block a loop over its non-empty key tiles from static tables
    (`tile_tables`: full tiles unmasked, then partial tiles masked from `Layout.spans`, the
    closed form of `allowed`), with an online softmax in float32. The program does not grow
    with the sequence, so compile time is bounded. A `custom_vjp` saves only q, k, v, the
    output and each row's log-sum-exp and recomputes every tile's scores in the backward
    pass: memory O(N), not O(allowed pairs). Tiles are `block_q x block_kv`; a ragged last
    query block runs with its own rows only, a ragged last key block is padded and masked.

    In a kernel layout with hidden tokens, hidden rows run in blocks of the K-1 copies of
    `block_kv` positions: over the originals that is a causal pattern over positions (one
    partial tile per block, as vanilla's), and their thin hidden-to-hidden band runs in
    sub-blocks of about `BAND_ROWS` rows over their own key windows, so that every PHD
    variant computes about as many pairs per allowed pair as vanilla (tests/test_flash.py
    counts the pairs it computes).

    `segment_mask(rows, cols) -> [B, ...]` (packed documents: a `SegmentMask`, or any function
    of jax index arrays) is applied on top of the static pattern on every computed tile,
    full tiles included. Rows whose tiles are all masked get a uniform (finite) softmax over
    those tiles' keys; rows of a query block without any tile get 0.
    """
    b, n, h, d = q.shape
    kvh, bk = k.shape[2], pattern.block_kv
    tab = tile_tables(pattern)
    kern = _Kernel(pattern, tab, None)
    mask_fn, mask_args = _runtime_rule(segment_mask, list(kern.index_shapes()))
    kern = kern._replace(mask_fn=mask_fn)

    # Queries: per stack `[blocks, B, KVH, G, rows, D]`; keys `[B, KVH, keys, D]`, and the
    # hidden keys the bands slide over, zero-padded at both ends.
    q_scaled = dot_ready(q * jnp.asarray(d**-0.5, q.dtype))
    q_stacks = tuple(
        q_scaled[:, st.row0 : st.row0 + st.rows * st.count]
        .reshape(b, st.count, st.rows, kvh, h // kvh, d)
        .transpose(1, 0, 3, 4, 2, 5)
        for st in tab.stacks
    )
    pad = ((0, 0), (0, tab.nk * bk - n), (0, 0), (0, 0))
    k, v = (jnp.pad(dot_ready(x), pad).transpose(0, 2, 1, 3) for x in (k, v))
    band_k = band_v = None
    if any(st.band is not None for st in tab.stacks):
        band_k, band_v = (jnp.pad(x[:, :, tab.key_limit : n], ((0, 0), (0, 0), tab.band_pad, (0, 0))) for x in (k, v))
    outs = _flash(kern, q_stacks, (k, v, band_k, band_v), mask_args)
    out = [o.transpose(1, 0, 4, 2, 3, 5).reshape(b, -1, h, d) for o in outs]
    return (out[0] if len(out) == 1 else jnp.concatenate(out, axis=1)).astype(q.dtype)
