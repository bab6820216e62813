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
