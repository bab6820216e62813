"""Reading a study's runs and judging its claims: final losses per seed, the paired difference
Δ with its spread σ, and the verdict rule (`RULE`, quoted on the generated page).

Every number comes from the runs' metrics.jsonl (`collect`); nothing is typed in.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import re

import numpy as np

from experiments.studies import Claim
from experiments.sweep import is_finished, is_saved_result

SAME_FRACTION = 0.25
MIN_SEEDS = 2  # fewer paired seeds give no σ, so no difference can count
RULE = (
    "For settings A and B, Δ is the mean over the n seeds both have of the paired difference "
    "A_s − B_s of the final validation loss (same seed: same data order, and the same initial weights "
    "when the shapes agree), and σ is the standard deviation of those n paired differences; with fewer "
    "than two seeds in common, Δ = mean(A) − mean(B) and σ = sqrt(std(A)² + std(B)²). "
    "**A difference counts when |Δ| > 2σ** (with n = 3 pairs that is a paired t-statistic above "
    "2√3 ≈ 3.46, a two-sided test at about 7%), so 2σ is the *minimum detectable effect* (MDE) of a "
    "comparison: the smallest observed difference that counts; a true effect well below it will "
    "usually not be detected. With fewer than two seeds nothing counts. "
    "Verdicts: a claim 'A is lower than B' is *reproduced* when Δ < 0 counts, *contradicted* when "
    "Δ > 0 counts, else *not detected* (the verdict gives the MDE 2σ). A claim 'A costs almost "
    f"nothing against B' (chunking) is *reproduced* when |Δ| + 2σ is below {SAME_FRACTION:g} × the K = 2 "
    "gain mean(vanilla) − mean(B) (the cost is bounded by a small part of what PHD gains), "
    f"*contradicted* when Δ > 0 counts and exceeds {SAME_FRACTION:g} × that gain, else *not detected*. "
    "Comparisons the paper never made (FLOP-matched baselines, naive repetition) say which is lower "
    "when the difference counts, else *not detected* with the MDE."
)


@dataclasses.dataclass
class SettingResult:
    name: str
    finals: dict  # seed -> final val_loss
    curves: dict  # seed -> list of (step, tokens, flops, val_loss)
    tokens: float | None  # original tokens of a finished run
    flops: float | None  # training FLOPs of a finished run
    layers: int | None
    unfinished: list  # seeds with a workdir that is not finished
    dirs: dict = dataclasses.field(default_factory=dict)  # seed -> its directory (workdir or results)
    configs: dict = dataclasses.field(default_factory=dict)  # seed -> its config.json

    @property
    def values(self) -> np.ndarray:
        return np.array([self.finals[s] for s in sorted(self.finals)], dtype=np.float64)

    @property
    def n(self) -> int:
        return len(self.finals)

    @property
    def mean(self) -> float:
        return float(self.values.mean()) if self.n else math.nan

    @property
    def std(self) -> float:
        return float(self.values.std(ddof=1)) if self.n > 1 else math.nan


def collect(root: str, name: str) -> SettingResult:
    """Every seed of one setting under ROOT/<name>/seed*/ (metrics.jsonl, config.json)."""
    from phd_jax.train.metrics import read_metrics

    res = SettingResult(name, {}, {}, None, None, None, [])
    for wd in sorted(glob.glob(os.path.join(root, name, "seed*"))):
        m = re.fullmatch(r"seed(\d+)", os.path.basename(wd))
        cfg_path = os.path.join(wd, "config.json")
        if not m or not os.path.isfile(cfg_path):
            continue
        seed = int(m.group(1))
        with open(cfg_path) as f:
            cfg = json.load(f)
        steps = int(cfg["num_steps"])
        if not (is_finished(wd, steps) or is_saved_result(wd, steps)):
            res.unfinished.append(seed)
            continue
        records = read_metrics(wd)
        res.finals[seed] = float(records[-1]["val_loss"])
        res.curves[seed] = [
            (r["step"], r["tokens"], r["flops"], r["val_loss"]) for r in records if r.get("val_loss") is not None
        ]
        res.tokens, res.flops = records[-1]["tokens"], records[-1]["flops"]
        res.layers = int(cfg["model"]["num_layers"])
        res.dirs[seed], res.configs[seed] = wd, cfg
    return res


# ---- statistics and verdicts --------------------------------------------------------------------


def difference(a: SettingResult, b: SettingResult) -> tuple[float, float, int, bool]:
    """(Δ, σ, n, paired): the rule's difference of final losses and its spread."""
    return paired_difference(a.finals, b.finals)


def paired_difference(a: dict, b: dict) -> tuple[float, float, int, bool]:
    """(Δ, σ, n, paired) of two {seed: value} dicts by the rule (`RULE`)."""
    common = sorted(set(a) & set(b))
    if len(common) >= MIN_SEEDS:
        d = np.array([a[s] - b[s] for s in common], dtype=np.float64)
        return float(d.mean()), float(d.std(ddof=1)), len(common), True
    va, vb = np.array(list(a.values()), np.float64), np.array(list(b.values()), np.float64)
    n = min(len(va), len(vb))
    if n == 0:
        return math.nan, math.nan, 0, False
    sd = lambda v: float(v.std(ddof=1)) if len(v) > 1 else math.nan  # noqa: E731
    sigma = math.sqrt(sd(va) ** 2 + sd(vb) ** 2) if n >= MIN_SEEDS else math.nan
    return float(va.mean() - vb.mean()), sigma, n, False


def counts(delta: float, sigma: float, n: int) -> bool:
    return n >= MIN_SEEDS and math.isfinite(sigma) and abs(delta) > 2 * sigma


def not_detected(sigma: float, n: int) -> str:
    """The verdict of a difference that does not count, with what could have counted."""
    if n < MIN_SEEDS or not math.isfinite(sigma):
        return f"not detected: {n} seed{'s' if n != 1 else ''}, so no σ and no minimum detectable effect"
    return f"not detected: the minimum detectable effect here is 2σ = {2 * sigma:.4f}"


def numbers(delta: float, sigma: float, n: int, paired: bool) -> str:
    return f"Δ = {delta:+.4f}, σ = {fmt(sigma)} ({'paired, ' if paired else ''}n = {n})"


def verdict(claim: Claim, results: dict) -> tuple[str, str]:
    """(verdict, the numbers behind it) for one claim."""
    a, b = results.get(claim.a), results.get(claim.b)
    if a is None or b is None or a.n == 0 or b.n == 0:
        missing = [x for x, r in ((claim.a, a), (claim.b, b)) if r is None or r.n == 0]
        return "not run", f"no finished runs of {', '.join(missing)}"
    delta, sigma, n, paired = difference(a, b)
    how = numbers(delta, sigma, n, paired)
    gain = None
    if claim.kind == "same":
        van = results.get("vanilla")
        if van is not None and van.n:
            gain = van.mean - b.mean
            how += f", K=2 gain {gain:+.4f}"
    return judge(claim, delta, sigma, n, gain), how


def judge(claim: Claim, delta: float, sigma: float, n: int, gain: float | None = None) -> str:
    """The rule's verdict on a claim from its numbers (`gain`: the K = 2 gain of a `same` claim)."""
    c = counts(delta, sigma, n)
    if claim.kind == "lower":
        return ("reproduced" if delta < 0 else "contradicted") if c else not_detected(sigma, n)
    if claim.kind == "which":
        return (f"{claim.a} lower" if delta < 0 else f"{claim.b} lower") if c else not_detected(sigma, n)
    if claim.kind == "same":
        if gain is None:
            return "not detected: no vanilla runs for the K = 2 gain"
        if n >= MIN_SEEDS and gain > 0 and abs(delta) + 2 * sigma < SAME_FRACTION * gain:
            return "reproduced"
        if c and delta > 0 and delta > SAME_FRACTION * max(gain, 0.0):
            return "contradicted"
        return not_detected(sigma, n)
    raise ValueError(f"claim kind {claim.kind!r}")


# ---- number formats -----------------------------------------------------------------------------


def fmt(x: float, digits: int = 4) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def signed(x: float, digits: int = 4) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:+.{digits}f}"


def si(x) -> str:
    if x is None:
        return "–"
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"
