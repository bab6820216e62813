"""PHD attention masks: the single source of truth for docs/spec.md section 3.

`allowed` states the three rules once, elementwise, on (position, copy) pairs.
It runs on numpy arrays (static masks, built at trace time) and on jax arrays
(decode-time masks against the KV cache), so training, prefill and decode can
never disagree about who attends to whom.

On top of it:
- `attention_mask`: the dense `[T*K, T*K]` mask in the paper's interleaved layout.
- `Layout`: a static list of tokens in the order a kernel sees them
  (`paper`, `kernel` = the paper's `[originals | hidden]` regrouping, or
  `originals` only), with its dense mask.
- `BlockPattern`: the static block-sparse pattern of a layout (empty / partial /
  full tiles) that the fast backends consume, with the layout's closed-form row spans.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable

import numpy as np

from phd_jax.config import ModelConfig, check_phd_args, has_hidden_tokens, has_window, is_chunked
from phd_jax.errors import as_int

EMPTY, PARTIAL, FULL = 0, 1, 2


def allowed(variant: str, q_pos, q_copy, k_pos, k_copy, repeat: int, window: int = 0, chunk: int | None = None):
    """May query (n, s) attend to key (m, r)? Spec section 3, broadcasting.

    Works on numpy and jax arrays alike (only operators, no library calls).
    """
    if variant == "naive":
        return k_pos * repeat + k_copy <= q_pos * repeat + q_copy
    ok = (k_copy == 0) & (k_pos <= q_pos)  # rule 1: global
    if not has_hidden_tokens(variant, repeat):
        return ok
    ok = ok | ((k_pos == q_pos) & (k_copy >= 1) & (k_copy <= q_copy))  # rule 2: own position
    if has_window(variant) and window >= 1:  # rule 3: window
        h_q = q_pos * (repeat - 1) + (q_copy - 1)
        h_k = k_pos * (repeat - 1) + (k_copy - 1)
        win = (q_copy >= 1) & (k_copy >= 1) & (h_k >= h_q - window) & (h_k <= h_q)
        if is_chunked(variant) and chunk is not None:
            win = win & (k_pos // chunk == q_pos // chunk)
        ok = ok | win
    return ok


def segment_allowed(
    variant: str,
    q_offset,
    q_copy,
    q_segment,
    k_offset,
    k_copy,
    k_segment,
    repeat: int,
    window: int = 0,
    chunk: int | None = None,
):
    """Packed documents (docs/spec.md section 3): `allowed` on positions counted from each segment's
    start (`*_offset`), and only within one segment (`*_segment`: segment ids). Chunks follow
    the offsets; the window depends only on `n - m`, so it is unchanged. Numpy or jax arrays,
    broadcasting. (Called `document_allowed` before 0.2.)"""
    return allowed(variant, q_offset, q_copy, k_offset, k_copy, repeat, window, chunk) & (q_segment == k_segment)


def _check_mask_args(variant, seq_len, repeat, window, chunk):
    as_int("seq_len", seq_len, 1)
    check_phd_args(variant, repeat, window, chunk)  # the config's field rules


def attention_mask(variant: str, seq_len: int, repeat: int, window: int = 0, chunk: int | None = None) -> np.ndarray:
    """Dense boolean mask `[T*K, T*K]`, paper layout (flat index n*K + s), rows = queries.

    `chunk=None` means no chunking. The window only applies to phd_swa / phd_cswa.
    """
    _check_mask_args(variant, seq_len, repeat, window, chunk)
    i = np.arange(seq_len * repeat)
    pos, copy = i // repeat, i % repeat
    return allowed(variant, pos[:, None], copy[:, None], pos[None, :], copy[None, :], repeat, window, chunk)


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
    before it, "treating them as absent": prefill's token set (docs/spec.md section 5).
    """

    kind: str
    variant: str
    seq_len: int
    repeat: int
    window: int = 0
    chunk: int | None = None
    hidden_from: int = 0

    @classmethod
    def for_config(cls, cfg: ModelConfig, seq_len: int, kind: str, hidden_from: int = 0) -> Layout:
        if kind not in LAYOUT_KINDS:
            raise ValueError(f"layout kind={kind!r} is invalid: allowed: {', '.join(LAYOUT_KINDS)}")
        return _layout(kind, cfg.variant, seq_len, cfg.repeat, cfg.effective_window, cfg.effective_chunk, hidden_from)

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
        """Dense boolean mask `[N, N]` of this layout (rows = queries). For the `dense`
        backend and tests only: the block-sparse backends never build it."""
        pos, copy = self.tokens
        return allowed(
            self.variant, pos[:, None], copy[:, None], pos[None, :], copy[None, :], self.repeat, self.window, self.chunk
        )

    @property
    def _regrouped(self) -> bool:
        return self.kind == "kernel" and self.variant != "naive" and self.repeat > 1

    def token_at(self, i):
        """`(pos, copy)` of the tokens at indices `i` of this layout, computed (not looked up),
        with operators only: works on numpy and jax integer arrays (splash evaluates it inside
        its kernel). Indices past the end map to positions past T (callers mask them)."""
        T, K = self.seq_len, self.repeat
        if self.kind == "originals":
            return i, i * 0
        if not self._regrouped:
            return i // K, i % K
        hidden = i >= T  # [originals | hidden in hidden order]
        h = i - T + self.hidden_from * (K - 1)  # hidden-order index h(n, s)
        return i + hidden * (h // (K - 1) - i), hidden * (h % (K - 1) + 1)

    def allowed_at(self, rows, cols):
        """`allowed` at (query index, key index) pairs of this layout, broadcasting."""
        q_pos, q_copy = self.token_at(rows)
        k_pos, k_copy = self.token_at(cols)
        return allowed(self.variant, q_pos, q_copy, k_pos, k_copy, self.repeat, self.window, self.chunk)

    def tile_mask(self, q0: int, q1: int, k0: int, k1: int) -> np.ndarray:
        """The mask of the sub-rectangle `[q0:q1, k0:k1]`, from `allowed`, in O(its size)."""
        return self.allowed_at(np.arange(q0, q1)[:, None], np.arange(k0, k1)[None, :])

    def spans(self):
        """Each row's allowed keys as `[0, a) | [b, c)` (index arrays `a, b, c` over all rows),
        or None where the layout has no such form (the interleaved paper layout of PHD).

        Closed form of `allowed` (tests check it against the dense mask): a query `(n, s)`
        sees originals `0..n` (rule 1), which are layout indices `[0, n+1)` in every layout
        here; a hidden query also sees the hidden tokens from `lo` to itself in hidden order
        (rule 2: `h(n, 1)`; rule 3: `h - W`, cut at its chunk's first hidden token), which in
        the kernel layout are the contiguous indices `[T + lo', T + h' + 1)`.
        """
        T, K, n_tok = self.seq_len, self.repeat, self.size
        i = np.arange(n_tok, dtype=np.int64)
        if self.kind == "originals" or (not self._regrouped and (self.variant == "naive" or K == 1)):
            return i + 1, i * 0, i * 0  # causal over this layout
        if not self._regrouped:
            return None
        pos, copy = self.token_at(i)
        if self.variant == "vanilla":  # rule 1 only
            return pos + 1, i * 0, i * 0
        h = pos * (K - 1) + copy - 1
        lo = pos * (K - 1)  # rule 2: own position, copies 1..s
        if self.variant in ("phd_swa", "phd_cswa") and self.window >= 1:
            win = h - self.window  # rule 3: the window ...
            if self.variant == "phd_cswa" and self.chunk is not None:
                win = np.maximum(win, (pos // self.chunk) * self.chunk * (K - 1))  # ... in the chunk
            lo = np.minimum(lo, win)
        first = self.hidden_from * (K - 1)  # earlier hidden tokens are absent
        lo = np.maximum(lo, first)
        hidden = copy > 0
        b = np.where(hidden, T + lo - first, 0)
        c = np.where(hidden, T + h + 1 - first, 0)
        return pos + 1, b, c

    def pattern(self, block_q: int, block_kv: int) -> BlockPattern:
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


@dataclasses.dataclass(frozen=True, eq=False)
class BlockPattern:
    """Per (query block, key block) tile: EMPTY (skip), PARTIAL (mask it) or FULL.

    Built with numpy at trace time, never traced, and never as a dense `[N, N]`
    mask: `Layout.pattern` derives it per query block from closed-form row spans
    of `allowed` (O(block_q) work per block). Edge tiles may be smaller than the
    block size (no padding needed by the pure-JAX kernel).

    What the kernels read: `block_mask` (splash's tile classes; `blocksparse`'s loop tables
    for layouts without hidden tokens), `layout` (its row spans, `Layout.spans`, give the
    `blocksparse` tables of a layout with hidden tokens and every partial tile's mask) and,
    for a pattern without a layout, `tile_mask`. Tests check each against the dense mask.

    `tile_mask(q0, q1, k0, k1)` gives the mask of any sub-rectangle (from
    `allowed`); `mask` is the whole dense mask, for tests only.
    """

    shape: tuple[int, int]  # (query tokens, key tokens)
    block_q: int
    block_kv: int
    block_mask: np.ndarray  # [nq, nk] int8 of EMPTY / PARTIAL / FULL
    pairs: Callable = dataclasses.field(default=None, repr=False)  # (rows, cols) -> allowed
    layout: Layout | None = None  # the layout this pattern was derived from, if any

    @classmethod
    def from_layout(cls, layout: Layout, block_q: int, block_kv: int) -> BlockPattern:
        """The pattern of `layout` without its dense mask: from row spans where the layout
        has them (every layout a kernel runs), else one `[block_q, N]` strip at a time."""
        spans = layout.spans()
        if spans is None:
            return cls._from_strips(layout, block_q, block_kv)
        n = layout.size
        a, b, c = spans
        hid = c > b
        assert (~hid | (b >= a)).all(), "row spans must be [0, a) then [b, c)"
        starts = np.arange(0, n, block_q)
        # Per query block: keys every row sees (full) and keys some row sees (any).
        a_lo, a_hi = np.minimum.reduceat(a, starts), np.maximum.reduceat(a, starts)
        b_lo = np.minimum.reduceat(np.where(hid, b, n), starts)
        c_hi = np.maximum.reduceat(np.where(hid, c, 0), starts)
        b_hi, c_lo = np.maximum.reduceat(b, starts), np.minimum.reduceat(c, starts)
        block_mask = np.zeros((len(starts), -(-n // block_kv)), np.int8)
        for i, blk in enumerate(zip(*(x.tolist() for x in (a_lo, a_hi, b_lo, c_hi, b_hi, c_lo)))):
            full = [(0, blk[0]), (blk[4], blk[5])]
            any_ = [(0, blk[1]), (blk[2], blk[3])]
            for lo, hi, status in _tile_runs(full, any_, block_kv, n):
                block_mask[i, lo:hi] = status
        return cls((n, n), block_q, block_kv, block_mask, layout.allowed_at, layout)

    @classmethod
    def _from_strips(cls, layout: Layout, block_q: int, block_kv: int) -> BlockPattern:
        """Any layout, one `[block_q, N]` strip of `allowed` at a time (O(N) per block):
        the interleaved paper layout of PHD, which no kernel runs."""
        assert layout.band_start is None
        n = layout.size
        block_mask = np.zeros((-(-n // block_q), -(-n // block_kv)), np.int8)
        for i, q0 in enumerate(range(0, n, block_q)):
            strip = layout.tile_mask(q0, min(q0 + block_q, n), 0, n)
            block_mask[i] = tile_classes(strip, block_kv)
        return cls((n, n), block_q, block_kv, block_mask, layout.allowed_at, layout)

    def tile_mask(self, q0: int, q1: int, k0: int, k1: int) -> np.ndarray:
        """The boolean mask of queries `[q0, q1)` x keys `[k0, k1)` (what a partial tile needs)."""
        return self.pairs(np.arange(q0, q1)[:, None], np.arange(k0, k1)[None, :])

    @functools.cached_property
    def mask(self) -> np.ndarray:
        """The dense `[Nq, Nk]` mask, O(N^2): for tests and references, never for kernels."""
        return self.tile_mask(0, self.shape[0], 0, self.shape[1])

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


def _merge(intervals):
    """Sorted, non-empty, with touching or overlapping intervals joined."""
    out = []
    for lo, hi in sorted(iv for iv in intervals if iv[1] > iv[0]):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _tile_runs(full, any_, g: int, n: int) -> list[tuple[int, int, int]]:
    """Columns `[0, n)` in groups of g (the last may be short), given the column
    intervals every row of a block sees (`full`) and some row sees (`any_`):
    maximal runs `(first group, end group, FULL or PARTIAL)`, empty ones left out."""
    ng = -(-n // g)
    clip = lambda ivs: _merge((max(lo, 0), min(hi, n)) for lo, hi in ivs)  # noqa: E731
    fulls = [(-(-lo // g), ng if hi >= n else hi // g) for lo, hi in clip(full)]
    fulls = [(lo, hi) for lo, hi in fulls if hi > lo]  # groups wholly inside
    anys = [(lo // g, -(-hi // g)) for lo, hi in clip(any_)]  # groups touched
    cuts = sorted({0, ng, *(x for iv in fulls + anys for x in iv)})
    out = []
    for lo, hi in zip(cuts, cuts[1:]):
        inside = lambda ivs: any(a <= lo and hi <= b for a, b in ivs)  # noqa: E731
        status = FULL if inside(fulls) else PARTIAL if inside(anys) else EMPTY
        if status == EMPTY:
            continue
        if out and out[-1][1] == lo and out[-1][2] == status:
            out[-1] = (out[-1][0], hi, status)
        else:
            out.append((lo, hi, status))
    return out


def tile_classes(rows: np.ndarray, block_kv: int) -> np.ndarray:
    """EMPTY / PARTIAL / FULL (int8) of each `block_kv`-column tile of a dense strip of rows
    `[rows, n]` (the last tile may be short)."""
    pad = -rows.shape[1] % block_kv
    full = np.pad(rows.all(0), (0, pad), constant_values=True).reshape(-1, block_kv).all(1)
    any_ = np.pad(rows.any(0), (0, pad), constant_values=False).reshape(-1, block_kv).any(1)
    return np.where(full, FULL, np.where(any_, PARTIAL, EMPTY)).astype(np.int8)


@functools.lru_cache(maxsize=32)
def _pattern(layout: Layout, block_q: int, block_kv: int) -> BlockPattern:
    return BlockPattern.from_layout(layout, block_q, block_kv)


_DEPRECATED = {"document_allowed": "segment_allowed"}


def __getattr__(name: str):
    """Deprecated names of 0.1."""
    if name in _DEPRECATED:
        new = _DEPRECATED[name]
        warnings.warn(f"phd_jax.masks.{name} is deprecated: use phd_jax.masks.{new}", DeprecationWarning, stacklevel=2)
        return globals()[new]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
