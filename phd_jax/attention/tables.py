"""The static loop tables of the `blocksparse` kernel, built once per pattern at trace time.

Numpy only, never traced: which key tiles each query block visits (full tiles unmasked,
partial tiles masked), in stacks of equally sized query blocks, and for a kernel layout with
hidden tokens the thin hidden-to-hidden band each hidden block slides over. The kernel
(`phd_jax.attention.blocksparse`) reads these and nothing else of the pattern's tiles.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from phd_jax.masks import FULL, PARTIAL, BlockPattern

# Rows per band sub-block: about this many, in whole positions.
BAND_ROWS = 32


class Band(NamedTuple):
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


class Stack(NamedTuple):
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
    slot: np.ndarray | None  # [count, P] int32 index into `Tables.masks` (no layout)
    band: Band | None


class Tables(NamedTuple):
    """Everything static the kernel loops over. Tiles cover keys `[0, key_limit)`; a layout
    with hidden tokens leaves the keys past it to the stacks' bands. Patterns without a
    `Layout` carry the stacked masks of their partial tiles; with a layout the kernel
    computes a partial tile's mask inside the loop: from the layout's row spans
    (`Layout.spans`, the closed form of `allowed`: one or two compares per score) where it
    has them, else from `allowed` itself."""

    n: int
    nk: int
    key_limit: int  # also where the hidden keys (the bands' keys) begin: T
    stacks: tuple[Stack, ...]
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


def _hidden_tables(pattern: BlockPattern) -> Tables:
    """Tables of a kernel layout with hidden tokens, from its closed-form row spans (O(N)).

    Rows `[0, T)` (originals) run in blocks of `block_q` over their causal keys. Hidden rows
    run in blocks of the K-1 copies of `block_kv` positions: the K-1 hidden copies of a block
    of positions see the same originals, so their tiles are exactly a causal pattern over
    positions (one partial diagonal tile, as vanilla's) with K-1 times the rows, and larger
    dots. Their hidden keys come from the band."""
    lay, bq, bk = pattern.layout, pattern.block_q, pattern.block_kv
    n, t_orig, k = lay.size, lay.band_start, lay.repeat
    spans = lay.spans()
    originals_end, hidden_start, _ = spans  # row r sees keys [0, a) | [b, c): a, b
    band_positions = _power_of_two_at_most(max(1, BAND_ROWS // (k - 1)))  # positions per sub-block
    stacks, band_pad = [], [0, 0]
    for lo, hi, block_rows in ((0, t_orig, bq), (t_orig, n, (k - 1) * bk)):
        for row0, rows, count in _split(lo, hi, block_rows):
            ends = originals_end[row0 : row0 + rows * count].reshape(count, rows)
            first, last = ends.min(axis=1) // bk, -(-ends.max(axis=1) // bk)  # partial tiles [first, last)
            width = max(1, int((last - first).max()))
            full = np.tile(np.arange(max(1, int(first.max())), dtype=np.int32), (count, 1))
            part = np.minimum(first[:, None] + np.arange(width), -(-n // bk) - 1).astype(np.int32)
            band = None
            if lo == t_orig:
                # Hidden-order index of each row's sub-block start, and of its first hidden key.
                sub = int((k - 1) * np.gcd(band_positions, rows // (k - 1)))
                r = np.arange(rows * count)
                first_key = hidden_start[row0 : row0 + rows * count] - t_orig
                reach = int(max(0, (row0 - t_orig + r // sub * sub - first_key).max()))
                band = Band(sub, reach)
                band_pad = [max(band_pad[0], reach), max(band_pad[1], (band.folds - 1) * band.sub - reach)]
            full_count, part_count = first.astype(np.int32), (last - first).astype(np.int32)
            stacks.append(Stack(row0, rows, count, full, full_count, part, part_count, None, band))
    return Tables(n, -(-n // bk), t_orig, tuple(stacks), None, tuple(band_pad), _spans_table(spans))


def _power_of_two_at_most(x: int) -> int:
    return 1 << max(0, x.bit_length() - 1)


@functools.lru_cache(maxsize=32)
def tile_tables(pattern: BlockPattern) -> Tables:
    """The kernel's tables of `pattern`: from the layout's row spans for a kernel layout with
    hidden tokens (`_hidden_tables`), else from the pattern's tile classes (`block_mask`),
    with the partial tiles' masks stacked when the pattern has no `Layout` to compute them."""
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
    for row0, rows, count in _split(0, n, bq):
        sel = slice(row0 // bq, row0 // bq + count)
        tabs = [x[sel] for x in (*_padded(full), *_padded(partial))]
        stacks.append(Stack(row0, rows, count, *tabs, None if slot is None else slot[sel], None))
    return Tables(
        n, blocks.shape[1], n, tuple(stacks), masks, (0, 0), _spans_table(None if lay is None else lay.spans())
    )


def _spans_table(spans) -> np.ndarray | None:
    """`Layout.spans()` (or None) as the kernel's `[3, N]` int32 table."""
    return None if spans is None else np.stack(spans).astype(np.int32)
