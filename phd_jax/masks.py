"""PHD attention masks: the single source of truth for spec section 3.

`allowed` states the three rules once, elementwise, on (position, copy) pairs.
It runs on numpy arrays (static masks, built at trace time) and on jax arrays
(decode-time masks against the KV cache), so training, prefill and decode can
never disagree about who attends to whom.

On top of it:
- `attention_mask`: the dense `[T*K, T*K]` mask in the paper's interleaved layout.
- `Layout`: a static list of tokens in the order a kernel sees them
  (`paper`, `kernel` = the paper's `[originals | hidden]` regrouping, or
  `originals` only), with its dense mask.
- `BlockPattern`: the static block-sparse pattern of a mask (empty / partial /
  full tiles, index lists, contiguous runs) that every fast backend consumes.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import numpy as np

from phd_jax.config import VARIANTS, ModelConfig, has_hidden_tokens, has_window, is_chunked

EMPTY, PARTIAL, FULL = 0, 1, 2


def allowed(variant: str, q_pos, q_copy, k_pos, k_copy, repeat: int, window: int = 0,
            chunk: int | None = None):
    """May query (n, s) attend to key (m, r)? Spec section 3, broadcasting.

    Works on numpy and jax arrays alike (only operators, no library calls).
    """
    if variant == "naive":
        return k_pos * repeat + k_copy <= q_pos * repeat + q_copy
    ok = (k_copy == 0) & (k_pos <= q_pos)                                  # rule 1: global
    if not has_hidden_tokens(variant, repeat):
        return ok
    ok = ok | ((k_pos == q_pos) & (k_copy >= 1) & (k_copy <= q_copy))     # rule 2: own position
    if has_window(variant) and window >= 1:                                # rule 3: window
        h_q = q_pos * (repeat - 1) + (q_copy - 1)
        h_k = k_pos * (repeat - 1) + (k_copy - 1)
        win = (q_copy >= 1) & (k_copy >= 1) & (h_k >= h_q - window) & (h_k <= h_q)
        if is_chunked(variant) and chunk is not None:
            win = win & (k_pos // chunk == q_pos // chunk)
        ok = ok | win
    return ok


def _check_mask_args(variant, seq_len, repeat, window, chunk):
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is invalid: allowed: {', '.join(VARIANTS)}")
    for name, value, low in (("seq_len", seq_len, 1), ("repeat", repeat, 1), ("window", window, 0)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name}={value!r} is invalid: must be an integer >= {low}")
    if chunk is not None and (not isinstance(chunk, (int, np.integer)) or chunk < 1):
        raise ValueError(f"chunk={chunk!r} is invalid: must be None or an integer >= 1")


def attention_mask(variant: str, seq_len: int, repeat: int, window: int = 0,
                   chunk: int | None = None) -> np.ndarray:
    """Dense boolean mask `[T*K, T*K]`, paper layout (flat index n*K + s), rows = queries.

    `chunk=None` means no chunking. The window only applies to phd_swa / phd_cswa.
    """
    _check_mask_args(variant, seq_len, repeat, window, chunk)
    i = np.arange(seq_len * repeat)
    pos, copy = i // repeat, i % repeat
    return allowed(variant, pos[:, None], copy[:, None], pos[None, :], copy[None, :],
                   repeat, window, chunk)


# ---------------------------------------------------------------------------
# Token layouts
# ---------------------------------------------------------------------------

LAYOUT_KINDS = ("paper", "kernel", "originals")


@dataclasses.dataclass(frozen=True)
class Layout:
    """A static sequence of tokens `(pos, copy)` for T positions, and its mask.

    - `paper`: all K copies interleaved, `i = n*K + s` (the literal definition).
    - `kernel`: for PHD variants `[originals | hidden tokens in hidden order]`
      (paper section 2.3): the original-to-original part is a plain causal
      mask and hidden rows see a staircase of originals plus a thin band,
      which is what makes the block pattern sparse. Equal to `paper` for
      vanilla and naive, where nothing is gained by regrouping.
    - `originals`: copy 0 of every position only, i.e. the vanilla stream.

    `hidden_from` (kernel layout only) drops the hidden tokens of positions
    before it, "treating them as absent": prefill's token set (spec section 5).
    """

    kind: str
    variant: str
    seq_len: int
    repeat: int
    window: int = 0
    chunk: int | None = None
    hidden_from: int = 0

    @classmethod
    def for_config(cls, config: ModelConfig, seq_len: int, kind: str, hidden_from: int = 0) -> "Layout":
        if kind not in LAYOUT_KINDS:
            raise ValueError(f"layout kind={kind!r} is invalid: allowed: {', '.join(LAYOUT_KINDS)}")
        return _layout(kind, config.variant, seq_len, config.repeat,
                       config.effective_window, config.effective_chunk, hidden_from)

    @functools.cached_property
    def tokens(self) -> tuple[np.ndarray, np.ndarray]:
        """(pos, copy) int32 arrays, one entry per token in this layout's order."""
        T, K = self.seq_len, self.repeat
        if self.kind == "originals":
            return np.arange(T, dtype=np.int32), np.zeros(T, np.int32)
        i = np.arange(T * K, dtype=np.int32)
        pos, copy = i // K, i % K
        if self.kind == "kernel" and has_hidden_tokens(self.variant, K):
            hidden = (copy != 0) & (pos >= self.hidden_from)
            order = np.concatenate([i[copy == 0], i[hidden]])  # hidden stay in hidden order
            pos, copy = pos[order], copy[order]
        return pos, copy

    @property
    def size(self) -> int:
        return len(self.tokens[0])

    @functools.cached_property
    def permutation(self) -> np.ndarray:
        """Index into the paper layout of each token of this layout (a permutation when
        the layout holds every token)."""
        pos, copy = self.tokens
        return pos * self.repeat + copy

    @functools.cached_property
    def logit_rows(self) -> np.ndarray:
        """Rows that produce logits: the last copy of each position (that has one), by position."""
        pos, copy = self.tokens
        last = self.repeat - 1 if self.kind != "originals" else 0
        rows = np.nonzero(copy == last)[0]
        return rows[np.argsort(pos[rows], kind="stable")].astype(np.int32)

    @functools.cached_property
    def mask(self) -> np.ndarray:
        """Dense boolean mask `[N, N]` of this layout (rows = queries)."""
        pos, copy = self.tokens
        return allowed(self.variant, pos[:, None], copy[:, None], pos[None, :], copy[None, :],
                       self.repeat, self.window, self.chunk)

    def pattern(self, block_q: int, block_kv: int) -> "BlockPattern":
        return _pattern(self, block_q, block_kv)

    @property
    def band_start(self) -> int | None:
        """Where the hidden tokens begin in the kernel layout (a thin diagonal band)."""
        if self.kind == "kernel" and has_hidden_tokens(self.variant, self.repeat):
            return self.seq_len
        return None


# Bounded: a layout caches its dense [N, N] mask (N = T*K) on the host.
@functools.lru_cache(maxsize=32)
def _layout(kind, variant, seq_len, repeat, window, chunk, hidden_from) -> Layout:
    # Cached so that equal layouts share their cached tokens, masks and patterns.
    return Layout(kind, variant, seq_len, repeat, window, chunk, hidden_from)


# ---------------------------------------------------------------------------
# Static block-sparse patterns
# ---------------------------------------------------------------------------


class Run(NamedTuple):
    """A contiguous key range `[start, stop)` of one query block, all partial or all full."""
    start: int
    stop: int
    partial: bool


@dataclasses.dataclass(frozen=True, eq=False)
class BlockPattern:
    """Per (query block, key block) tile: EMPTY (skip), PARTIAL (mask it) or FULL.

    Built with numpy at trace time, never traced. Edge tiles may be smaller
    than the block size (no padding needed by the pure-JAX kernel).

    `band_start`: where a trailing diagonal band begins (PHD's hidden-to-hidden
    part of the kernel layout: own-position copies plus the window), or None.
    Rows before it never see columns after it, and inside it every allowed key
    is at most `band_width - 1` rows below the query. A kernel may compute the
    band separately (`band_blocks`) and the `runs` then cover only the columns
    before `band_start`.
    """

    mask: np.ndarray          # [Nq, Nk] bool
    block_q: int
    block_kv: int
    block_mask: np.ndarray    # [nq, nk] int8 of EMPTY / PARTIAL / FULL
    band_start: int | None = None
    band_width: int = 0

    @classmethod
    def from_mask(cls, mask: np.ndarray, block_q: int, block_kv: int,
                  band_start: int | None = None) -> "BlockPattern":
        mask = np.asarray(mask, bool)
        nq_tok, nk_tok = mask.shape
        nq, nk = -(-nq_tok // block_q), -(-nk_tok // block_kv)
        pad = ((0, nq * block_q - nq_tok), (0, nk * block_kv - nk_tok))
        tiles = lambda m: m.reshape(nq, block_q, nk, block_kv)  # noqa: E731
        any_ = tiles(np.pad(mask, pad, constant_values=False)).any(axis=(1, 3))
        all_ = tiles(np.pad(mask, pad, constant_values=True)).all(axis=(1, 3))
        block_mask = np.where(all_, FULL, np.where(any_, PARTIAL, EMPTY)).astype(np.int8)
        band_width = 0
        if band_start is not None:
            band_width = _band_width(mask, band_start)
            if not 0 < band_width <= block_q:
                band_start, band_width = None, 0   # no thin band here: runs cover everything
        return cls(mask, block_q, block_kv, block_mask, band_start, band_width)

    @property
    def num_blocks(self) -> int:
        return self.block_mask.size

    @property
    def num_nonempty(self) -> int:
        return int((self.block_mask != EMPTY).sum())

    @property
    def nonempty_fraction(self) -> float:
        """Fraction of tiles computed: the attention cost relative to dense."""
        return self.num_nonempty / self.num_blocks

    @functools.cached_property
    def kv_indices(self) -> tuple[np.ndarray, np.ndarray]:
        """Index lists a kernel iterates: `(indices [nq, max_nnz] padded with -1, counts [nq])`."""
        counts = (self.block_mask != EMPTY).sum(axis=1).astype(np.int32)
        idx = np.full((self.block_mask.shape[0], max(int(counts.max()), 1)), -1, np.int32)
        for i, row in enumerate(self.block_mask):
            nz = np.nonzero(row)[0]
            idx[i, :len(nz)] = nz
        return idx, counts

    @functools.cached_property
    def runs(self) -> tuple[tuple[Run, ...], ...]:
        """Per query block, the contiguous key runs a kernel computes, in tokens.

        Refined below tile granularity: key columns are grouped by `RUN_ALIGN`
        (aligned slices keep the dots fast); a group is empty, full (every row
        of the block may attend to every column) or partial, and equal
        neighbours merge into runs. So a thin staircase costs its own width,
        not whole tiles. With a band, only the columns before `band_start`.
        """
        cols = self.mask if self.band_start is None else self.mask[:, :self.band_start]
        a, pad = RUN_ALIGN, -cols.shape[1] % RUN_ALIGN
        out = []
        for i in range(self.block_mask.shape[0]):
            rows = cols[i * self.block_q:(i + 1) * self.block_q]
            full = np.pad(rows.all(0), (0, pad), constant_values=True).reshape(-1, a).all(1)
            any_ = np.pad(rows.any(0), (0, pad), constant_values=False).reshape(-1, a).any(1)
            status = np.where(full, FULL, np.where(any_, PARTIAL, EMPTY))
            edges = np.flatnonzero(np.diff(status)) + 1
            out.append(tuple(
                Run(int(lo) * a, min(int(hi) * a, cols.shape[1]), bool(status[lo] == PARTIAL))
                for lo, hi in zip(np.r_[0, edges], np.r_[edges, len(status)])
                if status[lo] != EMPTY))
        return tuple(out)

    @functools.cached_property
    def band_blocks(self) -> tuple[int, np.ndarray]:
        """The band as `(c, mask [nb, c, 2c])`: band rows in blocks of c, each seeing its
        own block of keys and the previous one (c >= band_width - 1)."""
        start, n = self.band_start, self.mask.shape[0]
        c = max(8, -(-(self.band_width - 1) // 8) * 8)
        nb = -(-(n - start) // c)
        r = start + np.arange(nb * c).reshape(nb, c, 1)
        col = start + (np.arange(nb)[:, None, None] - 1) * c + np.arange(2 * c)[None, None, :]
        valid = (r < n) & (col >= start) & (col < n)
        band = np.where(valid, self.mask[np.minimum(r, n - 1), np.clip(col, 0, n - 1)], False)
        assert band.sum() == self.mask[start:, start:].sum(), "band blocks must cover the band"
        return c, band


def _band_width(mask: np.ndarray, start: int) -> int:
    """1 + the largest distance below the diagonal of the region `[start:, start:]`,
    or 0 if that region is not a lower band that only its own rows see."""
    if start >= min(mask.shape) or mask.shape[0] != mask.shape[1] or mask[:start, start:].any():
        return 0
    r, c = np.nonzero(mask[start:, start:])
    if r.size == 0 or (c > r).any():
        return 0
    return int((r - c).max()) + 1


# Granularity, in key columns, of the runs a kernel computes.
RUN_ALIGN = 16


@functools.lru_cache(maxsize=32)
def _pattern(layout: Layout, block_q: int, block_kv: int) -> BlockPattern:
    return BlockPattern.from_mask(layout.mask, block_q, block_kv, layout.band_start)
