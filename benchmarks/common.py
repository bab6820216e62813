"""Shared helpers for benchmarks: timing and markdown tables."""

from __future__ import annotations

import time

import jax


def time_fn(fn, *args, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time in seconds of `fn(*args)` (already jitted), after warm-up."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def markdown_table(headers: list[str], rows: list[list]) -> str:
    fmt = lambda x: f"{x:.3g}" if isinstance(x, float) else str(x)  # noqa: E731
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def pattern_from_mask(mask, block_q: int, block_kv: int):
    """The `BlockPattern` of a dense boolean mask `[Nq, Nk]` (tile classes from the tiles
    themselves, no `Layout`): the reference the layout builder is tested and timed against.
    `blocksparse` runs such a pattern from stacked tile masks."""
    import numpy as np  # noqa: PLC0415

    from phd_jax.masks import EMPTY, FULL, PARTIAL, BlockPattern  # noqa: PLC0415

    mask = np.asarray(mask, bool)
    nq_tok, nk_tok = mask.shape
    nq, nk = -(-nq_tok // block_q), -(-nk_tok // block_kv)
    pad = ((0, nq * block_q - nq_tok), (0, nk * block_kv - nk_tok))
    tiles = lambda m: m.reshape(nq, block_q, nk, block_kv)  # noqa: E731
    any_ = tiles(np.pad(mask, pad, constant_values=False)).any(axis=(1, 3))
    all_ = tiles(np.pad(mask, pad, constant_values=True)).all(axis=(1, 3))
    block_mask = np.where(all_, FULL, np.where(any_, PARTIAL, EMPTY)).astype(np.int8)
    return BlockPattern(mask.shape, block_q, block_kv, block_mask, lambda r, c: mask[r, c])


def reference_pattern(layout, block_q: int, block_kv: int):
    """The pattern of `layout` classified from its dense `[N, N]` mask (O(N^2)): the reference
    for `Layout.pattern`, which never builds that mask."""
    return pattern_from_mask(layout.mask, block_q, block_kv)
