"""The main study's parts of the generated page (experiments/report.py): the pilot that sized it,
the difference curves, the K' trade-off and the continuation table. Each returns markdown lines;
a part without runs says so in a line, so the page always builds."""

from __future__ import annotations

import os
import re

import numpy as np

from experiments import kprime, plots
from experiments.curves import delta_curve, describe
from experiments.studies import CONTINUATION, CURVES, PILOT, PILOT_LR, Claim
from experiments.verdicts import SettingResult, collect, difference, fmt, si, verdict

CONCLUSIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conclusions.md")


def pilot_summary(pilot_root: str) -> list[str]:
    """The pilot's numbers behind the main study's setting (docs/pilot.md has its full report)."""
    if not os.path.isdir(pilot_root):
        return [f"The pilot's results ({pilot_root}) are not here: see [pilot.md](pilot.md)."]
    results = {s.name: collect(pilot_root, s.name) for s in PILOT.settings}
    out = ["**The pilot** ([pilot.md](pilot.md), `python -m experiments.pilot`) that chose the setting:", ""]
    a, b = results["d256-600steps-PHD-2"], results["d256-600steps-vanilla"]
    if a.n and b.n:
        delta, sigma, n, _ = difference(a, b)
        out += [
            f"- PHD-2 − vanilla at 600 steps and the default learning rate 3e-3: Δ = {delta:+.4f}, "
            f"σ = {fmt(sigma)} over n = {n} paired seeds, so a minimum detectable effect 2σ = {fmt(2 * sigma)}.",
        ]
    rows = []  # (learning rate, vanilla's seed-0 loss or None, PHD-2's or None)
    for s in PILOT.settings:
        m = re.fullmatch(r"d256-600steps-vanilla(-lr([\d.]+)x)?", s.name)
        if not m:
            continue
        van, phd = results[s.name].finals.get(0), results.get(s.name.replace("vanilla", "PHD-2"))
        phd = phd.finals.get(0) if phd is not None else None
        if van is not None or phd is not None:
            rows.append((PILOT_LR * float(m.group(2) or 1), van, phd))
    if rows:
        show = lambda x: "not run yet" if x is None else f"{x:.4f}"  # noqa: E731
        out += [
            "- Learning rate (seed 0): "
            + "; ".join(
                f"{lr:g}: vanilla {show(v)}, PHD-2 {show(p)}"
                + (f" (Δ {p - v:+.4f})" if v is not None and p is not None else "")
                for lr, v, p in sorted(rows)
            )
            + "."
        ]
        best = {}
        for i, model in ((1, "vanilla"), (2, "PHD-2")):
            done = [r for r in rows if r[i] is not None]
            if done:
                best[model] = min(done, key=lambda r: r[i])[0]
        out += [
            "- Best rate so far: "
            + ", ".join(f"{m} {lr:g}" for m, lr in best.items())
            + (
                " (the same: one rate is fair to both)."
                if len(set(best.values())) == 1 and len(best) == 2
                else " (they differ, or one is not measured: each model's best rate is what a fair comparison needs)."
            )
        ]
    return out


def curves_section(study: str, results: dict, figure) -> list[str]:
    """Δ-vs-tokens and Δ-vs-FLOPs plots of the study's pairs (`CURVES`) and where each crosses zero."""
    pairs = CURVES.get(study, ())
    if not pairs:
        return []
    axes = [axis for axis in ("tokens", "flops") if any(ax == axis for _, _, ax in pairs)]
    out = [
        "",
        "**The difference over training.** Each curve is A − B of the validation loss at every "
        "evaluation, per seed (same seed: same weights and batches), B read at A's tokens or FLOPs "
        "(linear between B's evaluations, only where B has them); the line is the mean over seeds, "
        "the band spans the seeds' minimum to maximum. Below zero, A is lower."
        + (
            " At matched FLOPs, before the end, the vanilla trained on 2x the tokens is only part-way through "
            "its twice-as-long learning-rate schedule (its rate is higher than that of a run ending there), "
            "which favours A; at the end both runs have finished their schedules."
            if "flops" in axes
            else ""
        ),
    ]
    for axis in axes:
        curves = []
        for a, b, ax in pairs:
            ra, rb = results.get(a), results.get(b)
            if ax == axis and ra is not None and rb is not None and ra.n and rb.n:
                curves.append(delta_curve(ra, rb, axis))
        curves = [c for c in curves if c is not None]
        what = "original tokens" if axis == "tokens" else "training FLOPs"
        if not curves:
            out += ["", f"No pair at matched {what} has finished runs yet."]
            continue
        png, rel = figure(f"{study}_delta_{axis}")
        plots.delta_plot(curves, png, f"{study}: Δ validation loss vs {what}")
        out += ["", f"![Δ validation loss vs {what}]({rel})", ""]
        out += [f"- {describe(c)}" for c in curves]
    return out


def kprime_section(study: str, results: dict, figure) -> list[str]:
    rows = kprime.summarise({n: r for n, r in results.items() if r.n})
    out = [
        "",
        "**K chosen at inference.** Every trained PHD-K run (final checkpoint) evaluated with K' = 1 .. K+2 "
        "hidden copies per token (`eval.py --repeat=K'`; no parameter changes; W and C keep their values; "
        "K' = 1 is the vanilla computation), on the run's own validation batches, and its decode speed at "
        "each K' measured in one process (`python -m experiments.kprime`, which writes each run's "
        "`kprime.json`). Loss: mean ± std over seeds; Δ vs K' = K: mean paired change against the trained K "
        "(bold); speed: batch-1 greedy decoding, tokens/s and its ratio to K' = 1.",
        "",
    ]
    if not rows:
        return out + [
            f"No `kprime.json` in the study's runs yet: `python -m experiments.kprime --study={study} "
            "--root=RUNS` measures them from the checkpoints."
        ]
    d = rows[0]["decode"]
    png, rel = figure(f"{study}_kprime")
    plots.kprime_plot(rows, png, study)
    return out + [
        kprime.table(rows),
        "",
        f"Decode: batch {d['batch']}, {d['new_tokens']} tokens after a {d['prompt_tokens']}-token prompt, "
        f"every K' compiled first, then timed in turns, the median of {d['reps']} rounds, on `{d['device']}`.",
        "",
        f"![K chosen at inference: validation loss and decode speed vs K']({rel})",
    ]


def _start_step(config: dict) -> int | None:
    m = re.search(r"checkpoints/(\d+)/?$", str(config.get("init_from") or ""))
    return int(m.group(1)) if m else None


def _flops_per_step(config: dict) -> float:
    import ml_collections

    from phd_jax.flops import train_flops_per_sequence
    from phd_jax.train import model_config

    c = ml_collections.ConfigDict(config)
    return int(c.batch_size) * train_flops_per_sequence(model_config(c), int(c.seq_len))


def continuation_flops(cont: SettingResult, source: SettingResult, seed: int) -> float | None:
    """Training FLOPs of a continued run: the source's steps up to the checkpoint it continues, then
    its own steps (`phd_jax.flops`; the trainer's `flops` counts every step at the new model's rate)."""
    config = cont.configs[seed]
    start = _start_step(config)
    if start is None or seed not in source.configs:
        return None
    steps = int(config["num_steps"])
    return start * _flops_per_step(source.configs[seed]) + (steps - start) * _flops_per_step(config)


def continuation_section(study: str, root: str) -> list[str]:
    if study not in CONTINUATION:
        return []
    name, base, longer = CONTINUATION[study]
    cont, van, x2 = collect(root, name), collect(root, base), collect(root, longer)
    out = [
        "",
        f"**Continuing a run as PHD.** `{name}`: `{base}` continued from its midpoint checkpoint as PHD-2 "
        "to the same final step, with its optimizer state, step, learning-rate schedule and data position "
        "(`--config.init_state=full`). Against `vanilla` at matched tokens (both end at the same step) and "
        f"against `{longer}` at matched training FLOPs (its loss read at the continuation's FLOPs, linear "
        "between its evaluations). Verdicts by the rule above.",
        "",
    ]
    if cont.n == 0:
        where = os.path.relpath(root) if not os.path.relpath(root).startswith("..") else root
        return out + [f"No finished runs of `{name}` under `{where}` yet: no continuation result to report."]
    rows = ["| comparison | A | B | Δ = A − B | σ | n | verdict |", "|---|---|---|---|---|---|---|"]

    def row(label, b_name, b_finals):
        b = SettingResult(b_name, b_finals, {}, None, None, None, [])
        if not b_finals:
            rows.append(f"| {label} | {name} | {b_name} | – | – | 0 | not run |")
            return
        v, _ = verdict(Claim("which", name, b_name, label), {name: cont, b_name: b})
        delta, sigma, n, _ = difference(cont, b)
        rows.append(f"| {label} | {name} | {b_name} | {delta:+.4f} | {fmt(sigma)} | {n} | **{v}** |")

    row("matched original tokens", base, dict(van.finals))
    at = {}
    for s in sorted(set(cont.finals) & set(x2.curves)):
        f = continuation_flops(cont, van, s)
        pts = np.array([(p[2], p[3]) for p in x2.curves[s]], dtype=np.float64)
        if f is not None and pts[:, 0].min() <= f <= pts[:, 0].max():
            at[s] = float(np.interp(f, pts[:, 0], pts[:, 1]))
    flops = [continuation_flops(cont, van, s) for s in cont.finals]
    flops = [f for f in flops if f is not None]
    label = f"matched training FLOPs ({si(np.mean(flops))})" if flops else "matched training FLOPs"
    row(label, f"{longer} at the same FLOPs", at)
    return out + rows


def conclusions(path: str | None = None) -> list[str]:
    """The lead's hand-written conclusions (`CONCLUSIONS`, never generated), when the file exists."""
    path = path or CONCLUSIONS
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return ["", f.read().strip()]
