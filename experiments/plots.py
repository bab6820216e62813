"""The report's figures (PNG, matplotlib's Agg backend): validation loss vs tokens / FLOPs per
setting, the difference PHD − baseline with its seed band, and the K' loss/speed trade-off."""

from __future__ import annotations

import os

import numpy as np

from experiments.curves import AXES, AXIS_LABEL
from experiments.studies import Study


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> str:
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def mean_curve(r, axis: int):
    """(x, mean, std) of validation loss over the seeds at the steps every seed evaluated."""
    per_seed = [{p[0]: p for p in r.curves[s]} for s in sorted(r.curves)]
    steps = sorted(set.intersection(*[set(d) for d in per_seed]))
    x = np.array([per_seed[0][st][axis] for st in steps], dtype=np.float64)
    ys = np.array([[d[st][3] for st in steps] for d in per_seed], dtype=np.float64)
    return x, ys.mean(0), ys.std(0, ddof=1) if len(ys) > 1 else np.zeros(len(steps))


def loss_plot(study: Study, results: dict, path: str, axis: str) -> str | None:
    """Validation loss (mean ± std over seeds) of every setting against `axis`."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = 0
    for s in study.settings:
        r = results[s.name]
        if r.n == 0:
            continue
        x, mean, std = mean_curve(r, AXES[axis])
        style = "--" if s.name.startswith(("vanilla", "naive")) else "-"
        (line,) = ax.plot(x, mean, style, marker=".", label=f"{s.name} (n={r.n})")
        ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.15)
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("original tokens" if axis == "tokens" else "training FLOPs (phd_jax.flops)")
    if axis == "flops":
        ax.set_xscale("log")
    ax.set_ylabel("validation loss (nats per byte)")
    ax.set_title(f"{study.title}\nmean ± std over seeds", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    # the end of training is what the tables compare: zoom on the last 60% of the x range
    lo = min(line.get_xdata()[0] for line in ax.get_lines())
    hi = max(line.get_xdata()[-1] for line in ax.get_lines())
    tail = [y[len(y) // 3 :] for y in (line.get_ydata() for line in ax.get_lines()) if len(y)]
    if tail and axis == "tokens":
        ax.set_xlim(lo + 0.3 * (hi - lo), hi * 1.02)
        both = np.concatenate(tail)
        pad = 0.05 * (both.max() - both.min() + 1e-9)
        ax.set_ylim(both.min() - pad, both.max() + pad)
    return _save(fig, path)


def delta_plot(curves: list, path: str, title: str) -> str | None:
    """Mean a − b against the curves' axis (all of one axis), with the min–max band over seeds."""
    curves = [c for c in curves if c is not None]
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for c in curves:
        (line,) = ax.plot(c.x, c.mean, marker=".", label=f"{c.a} − {c.b} (n={c.n})")
        ax.fill_between(c.x, c.lo, c.hi, color=line.get_color(), alpha=0.15)
    ax.axhline(0.0, color="black", lw=0.8)
    axis = curves[0].axis
    ax.set_xlabel(AXIS_LABEL[axis] + (" (phd_jax.flops)" if axis == "flops" else ""))
    ax.set_ylabel("Δ validation loss (nats per byte)\nbelow 0: PHD lower")
    ax.set_title(f"{title}\nmean over seeds; band: min to max over seeds", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def kprime_plot(rows: list[dict], path: str, title: str) -> str | None:
    """Validation loss and decode speed (× K' = 1) against K', one line per trained setting."""
    if not rows:
        return None
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4))
    for name in dict.fromkeys(r["setting"] for r in rows):
        sel = [r for r in rows if r["setting"] == name]
        ks = [r["repeat"] for r in sel]
        label = f"{name} (trained K={sel[0]['trained_repeat']}, n={sel[0]['n']})"
        (line,) = left.plot(ks, [r["loss"] for r in sel], marker="o", label=label)
        right.plot(ks, [r["speed_vs_k1"] for r in sel], marker="o", color=line.get_color(), label=label)
        trained = [r for r in sel if r["repeat"] == r["trained_repeat"]]
        left.plot([r["repeat"] for r in trained], [r["loss"] for r in trained], "*", ms=14, color=line.get_color())
    left.set(xlabel="K' (hidden copies at inference)", ylabel="validation loss (nats per byte)")
    d = rows[0]["decode"]
    right.set(
        xlabel="K' (hidden copies at inference)",
        ylabel=f"decode speed / speed at K' = 1\n(batch 1, {d['new_tokens']} tokens after {d['prompt_tokens']})",
    )
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    left.legend(fontsize=7)
    fig.suptitle(f"{title}: K chosen at inference (star: the trained K)", fontsize=9)
    return _save(fig, path)
