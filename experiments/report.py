"""Tables, loss curves and verdicts from the studies' runs (their metrics.jsonl, nothing typed).

    python -m experiments.report [--root=runs/repro] [--out=docs/reproduction.md] [--studies=loss_vs_k,...]
                                 [--skip-missing] [--summary=README.md]

For each study: a markdown table of final validation loss per setting (mean ± std over
seeds, n, every seed's value), plots of validation loss against original tokens and against
training FLOPs (`<out dir>/reproduction/<study>_{tokens,flops}.png`), and a verdict per
claim by the rule in `RULE`. Only finished runs count (trained to their `num_steps`, see
experiments/sweep.py); unfinished ones are listed. `--root` may also be a study's results
directory (`experiments/results/<study>`, the sweep's `--results`: the runs' metrics.jsonl and
config.json without checkpoints). `--studies` also takes `pilot` (not part of the default).
If `--out` exists and holds the markers `<!-- results:begin -->` / `<!-- results:end -->`, only
the text between them is replaced (the hand-written part of the page stays); otherwise the file
is written whole.
`--summary=FILE` also writes one table (every claim's verdict, with its Δ and σ) and the main
plot between `<!-- reproduction:begin -->` / `<!-- reproduction:end -->` in FILE (the README),
so the summary there is generated too.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import math
import os
import re
import sys

import numpy as np

if __package__ in (None, ""):  # python experiments/report.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.studies import REPORTABLE, STUDIES, Claim, Study  # noqa: E402
from experiments.sweep import DEFAULT_ROOT, is_finished, is_saved_result  # noqa: E402

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
SUMMARY_BEGIN, SUMMARY_END = "<!-- reproduction:begin -->", "<!-- reproduction:end -->"
SAME_FRACTION = 0.25
RULE = (
    "A difference between settings A and B is Δ = mean(A) − mean(B) of the final validation loss. "
    "Its spread σ is the standard deviation over seeds of the paired difference A_s − B_s when both "
    "have at least two seeds in common (same seed: same data order, and the same initial weights "
    "when the shapes agree), else sqrt(std(A)² + std(B)²). **A difference counts when |Δ| > 2σ** "
    "(with n = 3 pairs that is about a two-sided 10% t-test); with fewer than two seeds nothing counts. "
    "Verdicts: a claim 'A is lower than B' is *reproduced* when Δ < 0 counts, *not reproduced* when "
    "Δ > 0 counts, else *inconclusive at this scale*. A claim 'A costs almost nothing against B' "
    f"(chunking) is *reproduced* when |Δ| + 2σ is below {SAME_FRACTION:g} × the K = 2 gain "
    "mean(vanilla) − mean(B) (the cost is bounded by a small part of what PHD gains), *not reproduced* "
    f"when Δ > 0 counts and exceeds {SAME_FRACTION:g} × that gain, else *inconclusive*. Comparisons the "
    "paper never made (FLOP-matched baselines) say which is lower when the difference counts, else "
    "'no difference detected'."
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
    return res


# ---- statistics and verdicts --------------------------------------------------------------------


def difference(a: SettingResult, b: SettingResult) -> tuple[float, float, int, bool]:
    """(Δ, σ, n, paired): the rule's difference of final losses and its spread."""
    common = sorted(set(a.finals) & set(b.finals))
    if len(common) >= 2:
        d = np.array([a.finals[s] - b.finals[s] for s in common])
        return float(d.mean()), float(d.std(ddof=1)), len(common), True
    n = min(a.n, b.n)
    sigma = math.sqrt(a.std**2 + b.std**2) if n >= 2 else math.nan
    return a.mean - b.mean, sigma, n, False


def counts(delta: float, sigma: float, n: int) -> bool:
    return n >= 2 and math.isfinite(sigma) and abs(delta) > 2 * sigma


def verdict(claim: Claim, results: dict) -> tuple[str, str]:
    """(verdict, the numbers behind it) for one claim."""
    a, b = results.get(claim.a), results.get(claim.b)
    if a is None or b is None or a.n == 0 or b.n == 0:
        missing = [x for x, r in ((claim.a, a), (claim.b, b)) if r is None or r.n == 0]
        return "not run", f"no finished runs of {', '.join(missing)}"
    delta, sigma, n, paired = difference(a, b)
    how = f"Δ = {delta:+.4f}, σ = {fmt(sigma)} ({'paired, ' if paired else ''}n = {n})"
    if n < 2:
        return "inconclusive (fewer than 2 seeds)", how
    c = counts(delta, sigma, n)
    if claim.kind == "lower":
        return ("reproduced" if c and delta < 0 else "not reproduced" if c else "inconclusive at this scale"), how
    if claim.kind == "which":
        return ((f"{claim.a} lower" if delta < 0 else f"{claim.b} lower") if c else "no difference detected"), how
    if claim.kind == "same":
        van = results.get("vanilla")
        if van is None or van.n == 0:
            return "inconclusive (no vanilla runs for the gain)", how
        gain = van.mean - b.mean
        how += f", K=2 gain {gain:+.4f}"
        if gain > 0 and abs(delta) + 2 * sigma < SAME_FRACTION * gain:
            return "reproduced", how
        if c and delta > 0 and delta > SAME_FRACTION * max(gain, 0.0):
            return "not reproduced", how
        return "inconclusive at this scale", how
    raise ValueError(f"claim kind {claim.kind!r}")


# ---- tables and plots ---------------------------------------------------------------------------


def fmt(x: float, digits: int = 4) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def si(x) -> str:
    if x is None:
        return "–"
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def table(study: Study, results: dict, skip_missing: bool = False) -> str:
    ref = results.get("vanilla")
    rows = [
        "| setting | layers | n | final val loss (mean ± std) | Δ vs vanilla | tokens | train FLOPs | per seed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in study.settings:
        r = results[s.name]
        if r.n == 0:
            if not skip_missing:
                rows.append(f"| {s.name} | – | 0 | not run | – | – | – | – |")
            continue
        delta = r.mean - ref.mean if ref is not None and ref.n else math.nan
        per_seed = ", ".join(f"s{seed}: {fmt(v)}" for seed, v in sorted(r.finals.items()))
        rows.append(
            f"| {s.name} | {r.layers} | {r.n} | {fmt(r.mean)} ± {fmt(r.std)} | "
            f"{'–' if not math.isfinite(delta) else f'{delta:+.4f}'} | {si(r.tokens)} | {si(r.flops)} | "
            f"{per_seed} |"
        )
    return "\n".join(rows)


def claims_table(study: Study, results: dict, skip_missing: bool = False) -> str:
    rows = ["| claim | A | B | verdict | numbers |", "|---|---|---|---|---|"]
    for c in study.claims:
        v, how = verdict(c, results)
        if skip_missing and v == "not run":
            continue
        rows.append(f"| {c.text} | {c.a} | {c.b} | **{v}** | {how} |")
    return "\n".join(rows)


def mean_curve(r: SettingResult, axis: int):
    """(x, mean, std) of validation loss over the seeds at the steps every seed evaluated."""
    per_seed = [{p[0]: p for p in r.curves[s]} for s in sorted(r.curves)]
    steps = sorted(set.intersection(*[set(d) for d in per_seed]))
    x = np.array([per_seed[0][st][axis] for st in steps], dtype=np.float64)
    ys = np.array([[d[st][3] for st in steps] for d in per_seed], dtype=np.float64)
    return x, ys.mean(0), ys.std(0, ddof=1) if len(ys) > 1 else np.zeros(len(steps))


def plot(study: Study, results: dict, path: str, axis: str) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    col = {"tokens": 1, "flops": 2}[axis]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = 0
    for s in study.settings:
        r = results[s.name]
        if r.n == 0:
            continue
        x, mean, std = mean_curve(r, col)
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
    ax.set_title(f"{study.title}\nmean ± std over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    # the end of training is what the tables compare: zoom on the last 60% of the x range
    lo = min(l.get_xdata()[0] for l in ax.get_lines())
    hi = max(l.get_xdata()[-1] for l in ax.get_lines())
    ends = [l.get_ydata() for l in ax.get_lines()]
    tail = [y[len(y) // 3 :] for y in ends if len(y)]
    if tail and axis == "tokens":
        ax.set_xlim(lo + 0.3 * (hi - lo), hi * 1.02)
        both = np.concatenate(tail)
        pad = 0.05 * (both.max() - both.min() + 1e-9)
        ax.set_ylim(both.min() - pad, both.max() + pad)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---- the page -----------------------------------------------------------------------------------


def figure_path(out: str, study: str, axis: str) -> str:
    """Where the page `out` keeps a study's plot: `<out dir>/<out name>/<study>_<axis>.png`."""
    out_dir = os.path.dirname(os.path.abspath(out))
    return os.path.join(out_dir, os.path.splitext(os.path.basename(out))[0], f"{study}_{axis}.png")


def render(root: str, out: str, studies: list[str], skip_missing: bool = False) -> str:
    out_dir = os.path.dirname(os.path.abspath(out))
    cmd = f"python -m experiments.report --root={root}"
    if os.path.normpath(out) != os.path.normpath("docs/reproduction.md"):
        cmd += f" --out={out}"
    if list(studies) != list(STUDIES):
        cmd += f" --studies={','.join(studies)}"
    if skip_missing:
        cmd += " --skip-missing"
    parts = [
        f"Generated by `{cmd}` from the runs' `metrics.jsonl` "
        f"(final validation loss of every finished run; nats per byte).",
        "",
        f"**Verdict rule.** {RULE}",
    ]
    for name in studies:
        study = REPORTABLE[name]
        results = {s.name: collect(root, s.name) for s in study.settings}
        if "vanilla" not in results and any(c.kind == "same" for c in study.claims):
            results["vanilla"] = collect(root, "vanilla")
        parts += ["", f"### {study.title} (`{name}`)", "", study.description, "", table(study, results, skip_missing)]
        unfinished = [f"{r.name} seed{s}" for r in results.values() for s in r.unfinished]
        if unfinished:
            parts += ["", f"Unfinished runs (not counted): {', '.join(unfinished)}."]
        for axis in ("tokens", "flops"):
            png = plot(study, results, figure_path(out, name, axis), axis)
            if png:
                rel = os.path.relpath(png, out_dir)
                parts += ["", f"![{study.title}: validation loss vs {axis}]({rel})"]
        if study.claims:
            parts += ["", claims_table(study, results, skip_missing)]
    return "\n".join(parts) + "\n"


def summary(root: str, out: str, studies: list[str], path: str) -> str:
    """The README's summary: every claim of `studies` in one table, and the first study's
    loss-vs-tokens plot (written by `render` beside `out`), linked relative to `path`."""
    rows = ["| study | claim | A | B | Δ = A − B | σ | n | verdict |", "|---|---|---|---|---|---|---|---|"]
    for name in studies:
        study = REPORTABLE[name]
        names = {c.a for c in study.claims} | {c.b for c in study.claims} | {"vanilla"}
        results = {n: collect(root, n) for n in names}
        for c in study.claims:
            v, _ = verdict(c, results)
            a, b = results[c.a], results[c.b]
            if a.n and b.n:
                delta, sigma, n, _ = difference(a, b)
                nums = f"{delta:+.4f} | {fmt(sigma)} | {n}"
            else:
                nums = "– | – | 0"
            rows.append(f"| `{name}` | {c.text} | {c.a} | {c.b} | {nums} | **{v}** |")
    here = os.path.dirname(os.path.abspath(path))
    page, fig = os.path.relpath(out, here), os.path.relpath(figure_path(out, studies[0], "tokens"), here)
    return (
        "\n".join(
            [
                f"Generated by `python -m experiments.report` from `{root}` (the rule and the "
                f"full tables: [{page}]({page})).",
                "",
                *rows,
                "",
                f"![{REPORTABLE[studies[0]].title}: validation loss vs original tokens]({fig})",
            ]
        )
        + "\n"
    )


def _replace_between(path: str, begin: str, end: str, body: str) -> str | None:
    """`path`'s text with `body` between the markers, or None if it has no such markers."""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        old = f.read()
    if begin in old and end in old and old.index(begin) < old.index(end):
        return old[: old.index(begin) + len(begin)] + "\n" + body + old[old.index(end) :]
    return None


def write(root: str, out: str, studies: list[str], skip_missing: bool = False) -> str:
    body = render(root, out, studies, skip_missing)
    text = _replace_between(out, BEGIN, END, body)
    if text is None:
        text = f"# Reproduction results\n\n{BEGIN}\n{body}{END}\n"
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        f.write(text)
    return text


def write_summary(root: str, out: str, studies: list[str], path: str) -> str:
    """Replace the summary between the markers in `path`; a ValueError if it has none."""
    text = _replace_between(path, SUMMARY_BEGIN, SUMMARY_END, summary(root, out, studies, path))
    if text is None:
        raise ValueError(
            f"--summary={path!r} is invalid: it must exist and hold the markers {SUMMARY_BEGIN} and {SUMMARY_END}"
        )
    with open(path, "w") as f:
        f.write(text)
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.report", description=__doc__.split("\n")[0])
    p.add_argument("--root", default=DEFAULT_ROOT)
    p.add_argument("--out", default="docs/reproduction.md")
    p.add_argument("--studies", default=",".join(STUDIES))
    p.add_argument(
        "--skip-missing", action="store_true", help="leave settings and claims without finished runs out of the tables"
    )
    p.add_argument(
        "--summary",
        default=None,
        metavar="FILE",
        help="also write the one-table summary and main plot between the reproduction markers in FILE",
    )
    args = p.parse_args(argv)
    names = [s for s in args.studies.split(",") if s]
    for s in names:
        if s not in REPORTABLE:
            print(f"error: --studies={s!r} is invalid: allowed {', '.join(REPORTABLE)}", file=sys.stderr)
            return 2
    if not os.path.isdir(args.root):
        print(f"error: --root={args.root!r} is invalid: no such directory (run a study first)", file=sys.stderr)
        return 2
    if args.summary and _replace_between(args.summary, SUMMARY_BEGIN, SUMMARY_END, "") is None:
        print(
            f"error: --summary={args.summary!r} is invalid: it must exist and hold the markers "
            f"{SUMMARY_BEGIN} and {SUMMARY_END}",
            file=sys.stderr,
        )
        return 2
    write(args.root, args.out, names, args.skip_missing)
    print(f"wrote {args.out}")
    if args.summary:
        write_summary(args.root, args.out, names, args.summary)
        print(f"wrote the summary in {args.summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
