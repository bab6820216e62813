"""The difference PHD − baseline over training, per seed, against original tokens or training
FLOPs (issue 20, item 2): `delta_curve` pairs the seeds, reads the baseline at the same x (linear
interpolation between its evaluations, only inside the range it covers), and `describe` says in
words where, if anywhere, the mean difference crosses zero.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from experiments.verdicts import SettingResult, si

AXES = {"tokens": 1, "flops": 2}  # the column of SettingResult.curves' (step, tokens, flops, loss)
MAX_CROSSINGS = 3  # more are summarised: first two and the last
AXIS_LABEL = {"tokens": "original tokens", "flops": "training FLOPs"}


@dataclasses.dataclass
class DeltaCurve:
    a: str
    b: str
    axis: str
    x: np.ndarray
    per_seed: np.ndarray  # [seeds, len(x)]: a_s(x) − b_s(x)
    seeds: list

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def mean(self) -> np.ndarray:
        return self.per_seed.mean(0)

    @property
    def lo(self) -> np.ndarray:
        return self.per_seed.min(0)

    @property
    def hi(self) -> np.ndarray:
        return self.per_seed.max(0)


def delta_curve(a: SettingResult, b: SettingResult, axis: str) -> DeltaCurve | None:
    """a − b at a's evaluations (the steps every paired seed of a evaluated), b interpolated at the
    same tokens / FLOPs; None without a common seed or an overlapping x range."""
    col = AXES[axis]
    seeds = sorted(set(a.curves) & set(b.curves))
    if not seeds:
        return None
    steps = sorted(set.intersection(*[{p[0] for p in a.curves[s]} for s in seeds]))
    first = {p[0]: p for p in a.curves[seeds[0]]}
    x = np.array([first[st][col] for st in steps], dtype=np.float64)
    lo = max(min(p[col] for p in b.curves[s]) for s in seeds)
    hi = min(max(p[col] for p in b.curves[s]) for s in seeds)
    keep = (x >= lo) & (x <= hi)
    if not keep.any():
        return None
    rows = []
    for s in seeds:
        ya = {p[0]: p[3] for p in a.curves[s]}
        bx = np.array([p[col] for p in b.curves[s]], dtype=np.float64)
        by = np.array([p[3] for p in b.curves[s]], dtype=np.float64)
        order = np.argsort(bx)
        ref = np.interp(x[keep], bx[order], by[order])
        rows.append(np.array([ya[st] for st, k in zip(steps, keep) if k]) - ref)
    return DeltaCurve(a.name, b.name, axis, x[keep], np.array(rows), seeds)


def zero_crossings(x: np.ndarray, y: np.ndarray) -> list[tuple[float, str]]:
    """(x where y crosses zero, linearly interpolated; 'down' or 'up') for every sign change."""
    out = []
    for i in range(len(y) - 1):
        y0, y1 = y[i], y[i + 1]
        if y0 == 0 and i == 0:
            continue
        if (y0 > 0 >= y1) or (y0 < 0 <= y1):
            t = y0 / (y0 - y1)
            out.append((float(x[i] + t * (x[i + 1] - x[i])), "down" if y1 < y0 else "up"))
    return out


def describe(c: DeltaCurve) -> str:
    """One sentence: where the mean a − b crosses zero, and where it ends with its seed band."""
    unit = "tokens" if c.axis == "tokens" else "FLOPs"
    y = c.mean
    cross = zero_crossings(c.x, y)
    if not cross:
        side = f"{c.a} lower" if y[-1] < 0 else f"{c.b} lower"
        where = f"never crosses zero ({'below' if y[-1] < 0 else 'above'} it at every evaluation: {side})"
    else:
        said = [
            f"{si(x0)} {unit} ({(c.a if d == 'down' else c.b) + ' lower after'})" for x0, d in cross[:MAX_CROSSINGS]
        ]
        where = "crosses zero at " + ", ".join(said)
        if len(cross) > MAX_CROSSINGS:
            x0, d = cross[-1]
            where = (
                f"crosses zero {len(cross)} times (the first at {', '.join(said[:2])}; the last at {si(x0)} "
                f"{unit}, {c.a if d == 'down' else c.b} lower after)"
            )
    below = np.flatnonzero(~(c.hi < 0))  # the evaluations where some seed is not below zero
    band = ""
    if len(below) == 0:
        band = "; every seed is below zero at every evaluation"
    elif below[-1] < len(y) - 1:
        band = f"; every seed is below zero from {si(c.x[below[-1] + 1])} {unit} on"
    elif np.all(c.lo[-1:] > 0):
        band = "; every seed is above zero at the end"
    return (
        f"{c.a} − {c.b} (n = {c.n}, {si(c.x[0])} to {si(c.x[-1])} {unit}): {where}; at the end "
        f"Δ = {y[-1]:+.4f} (seeds {c.lo[-1]:+.4f} to {c.hi[-1]:+.4f}){band}."
    )
