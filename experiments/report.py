"""Tables, loss curves and verdicts from the studies' runs (their metrics.jsonl, nothing typed).

    python -m experiments.report [--root=DIR | --root=DIR,STUDY=DIR,...] [--out=docs/reproduction.md]
                                 [--studies=when_pays,loss_vs_k,...] [--skip-missing] [--summary=README.md]

For each study: a markdown table of final validation loss per setting (mean ± std over seeds, n,
every seed's value), plots of validation loss against original tokens and against training FLOPs
(`<out dir>/<out name>/<study>_{tokens,flops}.png`), and per claim Δ, σ, n and a verdict by the rule
in experiments/verdicts.py's `RULE` (a difference that does not count gives its minimum detectable
effect 2σ). Only finished runs count (trained to their `num_steps`, see experiments/sweep.py);
unfinished ones are listed. The main study (`when_pays`, first by default) also gets the pilot's
numbers, the difference PHD − baseline over training against tokens and FLOPs with its seed band
and where it crosses zero (experiments/curves.py), the K' table and plot (experiments/kprime.py:
the runs' `kprime.json`), the continuation table, and the hand-written experiments/conclusions.md
when it exists (experiments/sections.py).

Roots: a study's runs are read from ROOT/<setting>/seed<k>/, a train.py workdir or a results
directory (`experiments/results/<study>`, the sweep's `--results`: metrics.jsonl, config.json,
kprime.json, no checkpoints). `--root=DIR` is every study's root; `STUDY=DIR` items name one
study's. A study with neither reads `experiments/results/<study>` (the pilot and the main study
always; the others when it exists, else `runs/repro`). `--studies` also takes `pilot` (not part of the default).

The page: if `--out` exists and holds the markers `<!-- results:begin -->` / `<!-- results:end -->`,
only the text between them is replaced (the hand-written part of the page stays); otherwise the
file is written whole. Each study's part sits between `<!-- study:NAME:begin -->` /
`<!-- study:NAME:end -->`; a study with no finished run under its root keeps its part from the
previous page when that part shows results (its verdicts re-judged from its numbers by the
current rule), so regenerating on a machine without an old study's runs never loses its results.
`--summary=FILE` also writes one table (the verdict of every claim of the studies with runs, with
Δ, σ and n) and the first study's main plot between `<!-- reproduction:begin -->` /
`<!-- reproduction:end -->` in FILE (the README), so the summary there is generated too.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys

if __package__ in (None, ""):  # python experiments/report.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import kprime, plots, sections  # noqa: E402
from experiments.studies import CONTINUATION, MAIN_STUDY, OTHER_STUDIES, REPORTABLE, STUDIES, Study  # noqa: E402
from experiments.sweep import DEFAULT_RESULTS, DEFAULT_ROOT  # noqa: E402
from experiments.verdicts import (  # noqa: E402, F401  (the report's API before the split)
    RULE,
    SAME_FRACTION,
    SettingResult,
    collect,
    counts,
    difference,
    fmt,
    judge,
    not_detected,
    si,
    verdict,
)

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
SUMMARY_BEGIN, SUMMARY_END = "<!-- reproduction:begin -->", "<!-- reproduction:end -->"
DEFAULT_STUDIES = (MAIN_STUDY, *STUDIES)
PILOT_ROOT = os.path.join(DEFAULT_RESULTS, "pilot")


def study_markers(name: str) -> tuple[str, str]:
    return f"<!-- study:{name}:begin -->", f"<!-- study:{name}:end -->"


# ---- roots --------------------------------------------------------------------------------------


def parse_roots(text: str | None) -> tuple[str | None, dict]:
    """`DIR` and/or `STUDY=DIR` items -> (every study's root or None, {study: root})."""
    default, per = None, {}
    for item in (text or "").split(","):
        if not item:
            continue
        study, sep, path = item.partition("=")
        if sep:
            if study not in REPORTABLE:
                raise ValueError(f"--root={text!r} is invalid: {study!r} is not a study ({', '.join(REPORTABLE)})")
            per[study] = path
        else:
            default = item
    return default, per


def root_for(study: str, default: str | None, per: dict) -> str:
    if study in per:
        return per[study]
    if default:
        return default
    committed = os.path.join(DEFAULT_RESULTS, study)
    return committed if study in OTHER_STUDIES or os.path.isdir(committed) else DEFAULT_ROOT


def shown(path: str) -> str:
    """`path` as the page shows it: relative to the working directory when it is below it."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def roots_text(default: str | None, per: dict) -> str:
    return ",".join(([default] if default else []) + [f"{k}={v}" for k, v in per.items()])


# ---- tables -------------------------------------------------------------------------------------


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


CLAIM_ROW = re.compile(
    r"^\| (?P<text>.+?) \| (?P<a>\S+) \| (?P<b>\S+) \| \*\*(?P<v>[^|]+)\*\* \| Δ = (?P<d>[-+]?[\d.]+), "
    r"σ = (?P<s>[\d.]+|–) \((?:paired, )?n = (?P<n>\d+)\)(?:, K=2 gain (?P<g>[-+]?[\d.]+))? \|$"
)


def rejudge(block: str, study: Study) -> str:
    """A kept part's claim rows with their verdicts re-judged by the current rule from their numbers."""
    claims = {c.text: c for c in study.claims}
    lines = []
    for line in block.splitlines():
        m = CLAIM_ROW.match(line)
        if m and m["text"] in claims:
            sigma = math.nan if m["s"] == "–" else float(m["s"])
            gain = float(m["g"]) if m["g"] else None
            v = judge(claims[m["text"]], float(m["d"]), sigma, int(m["n"]), gain)
            line = line.replace(f"**{m['v']}**", f"**{v}**", 1)
        lines.append(line)
    return "\n".join(lines)


# ---- the page -----------------------------------------------------------------------------------


def figure_dir(out: str) -> str:
    """Where the page `out` keeps its plots: `<out dir>/<out name>/`."""
    out_dir = os.path.dirname(os.path.abspath(out))
    return os.path.join(out_dir, os.path.splitext(os.path.basename(out))[0])


def figure_path(out: str, study: str, axis: str) -> str:
    """A study's loss plot on the page `out`: `<out dir>/<out name>/<study>_<axis>.png`."""
    return os.path.join(figure_dir(out), f"{study}_{axis}.png")


def study_results(study: Study, root: str) -> dict:
    results = {s.name: collect(root, s.name) for s in study.settings}
    if "vanilla" not in results and any(c.kind == "same" for c in study.claims):
        results["vanilla"] = collect(root, "vanilla")
    return results


def study_part(name: str, root: str, out: str, skip_missing: bool = False) -> tuple[str, bool]:
    """(markdown of one study, whether it has any finished run)."""
    study = REPORTABLE[name]
    out_dir = os.path.dirname(os.path.abspath(out))
    results = study_results(study, root)
    has_runs = any(r.n for r in results.values())

    def figure(stem):
        png = os.path.join(figure_dir(out), f"{stem}.png")
        return png, os.path.relpath(png, out_dir)

    parts = [f"### {study.title} (`{name}`)", "", f"Runs: `{shown(root)}`.", "", study.description]
    if name == MAIN_STUDY:
        parts += ["", *sections.pilot_summary(PILOT_ROOT)]
    if has_runs:
        parts += ["", table(study, results, skip_missing)]
    else:
        parts += ["", f"No finished runs under `{shown(root)}` yet."]
    unfinished = [f"{r.name} seed{s}" for r in results.values() for s in r.unfinished]
    if unfinished:
        parts += ["", f"Unfinished runs (not counted): {', '.join(unfinished)}."]
    for axis in ("tokens", "flops"):
        png = plots.loss_plot(study, results, figure_path(out, name, axis), axis)
        if png:
            parts += ["", f"![{study.title}: validation loss vs {axis}]({os.path.relpath(png, out_dir)})"]
    if study.claims and has_runs:
        parts += ["", claims_table(study, results, skip_missing)]
    parts += sections.curves_section(name, results, figure)
    if name == MAIN_STUDY or any(kprime.load(d) for r in results.values() for d in r.dirs.values()):
        parts += sections.kprime_section(name, results, figure)
    if name in CONTINUATION:
        parts += sections.continuation_section(name, root)
    if name == MAIN_STUDY:
        parts += sections.conclusions()
    return "\n".join(parts), has_runs


def kept_part(old: str | None, name: str) -> str | None:
    """The study's part of the previous page `old`, if it has one."""
    begin, end = study_markers(name)
    if old and begin in old and end in old and old.index(begin) < old.index(end):
        return old[old.index(begin) + len(begin) : old.index(end)].strip("\n") or None
    return None


KEPT_NOTE = "*Kept from the previous page: no finished run of this study under `{where}` here.*"


def part_text(name: str, where: str, out: str, skip_missing: bool, old: str | None) -> str:
    """A study's part: generated from its runs, or (none here) kept from the page `old` and re-judged."""
    body, has_runs = study_part(name, where, out, skip_missing)
    kept = None if has_runs else kept_part(old, name)
    if kept is None or not any(CLAIM_ROW.match(line) for line in kept.splitlines()):
        return body  # runs here, or nothing worth keeping (no results in the old part)
    kept = "\n".join(
        line for line in kept.splitlines() if not line.startswith(("*Kept from the previous page", "**Verdict rule.**"))
    ).strip()
    return f"{KEPT_NOTE.format(where=shown(where))}\n\n{rejudge(kept, REPORTABLE[name])}"


def render(root, out: str, studies: list[str], skip_missing: bool = False, old: str | None = None, placed=()) -> str:
    """The results section. `root`: a directory or `DIR,STUDY=DIR` items (see the module doc);
    `old`: the previous page, whose part of a study without runs here is kept; `placed`: studies
    whose parts sit elsewhere on the page (left out here)."""
    default, per = parse_roots(root)
    cmd = "python -m experiments.report"
    if root:
        cmd += f" --root={root}"
    if os.path.normpath(out) != os.path.normpath("docs/reproduction.md"):
        cmd += f" --out={out}"
    if list(studies) != list(DEFAULT_STUDIES):
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
        if name in placed:
            continue
        begin, end = study_markers(name)
        parts += ["", begin, part_text(name, root_for(name, default, per), out, skip_missing, old), end]
    return "\n".join(parts) + "\n"


SUMMARY_ROW = re.compile(
    r"^\| `(?P<study>[^`]+)` \| (?P<text>.+?) \| (?P<a>\S+) \| (?P<b>\S+) \| (?P<d>[-+]?[\d.]+|–) \| "
    r"(?P<s>[\d.]+|–) \| (?P<n>\d+) \| \*\*(?P<v>[^|]+)\*\* \|$"
)


def kept_summary_rows(old: str | None, study: Study) -> list[str]:
    """A study's rows of the previous summary, their verdicts re-judged by the current rule."""
    claims = {c.text: c for c in study.claims}
    rows = []
    for line in (old or "").splitlines():
        m = SUMMARY_ROW.match(line)
        if not m or m["study"] != study.name or m["text"] not in claims or m["d"] == "–":
            continue
        sigma = math.nan if m["s"] == "–" else float(m["s"])
        claim = claims[m["text"]]
        if claim.kind == "same":  # its gain is not in the row: the old words, renamed
            v = {"reproduced": "reproduced", "not reproduced": "contradicted", "contradicted": "contradicted"}.get(
                m["v"], not_detected(sigma, int(m["n"]))
            )
        else:
            v = judge(claim, float(m["d"]), sigma, int(m["n"]))
        rows.append(line.replace(f"**{m['v']}**", f"**{v}**", 1))
    return rows


def summary(root, out: str, studies: list[str], path: str, old: str | None = None) -> str:
    """The README's summary: every claim of the `studies` in one table (a study without runs here
    keeps its rows of the previous summary `old`, re-judged), and the loss-vs-tokens plot of the
    first study with runs (written by `render` beside `out`), linked relative to `path`."""
    default, per = parse_roots(root)
    rows = ["| study | claim | A | B | Δ = A − B | σ | n | verdict |", "|---|---|---|---|---|---|---|---|"]
    with_runs, kept = [], []
    for name in studies:
        study = REPORTABLE[name]
        where = root_for(name, default, per)
        names = {c.a for c in study.claims} | {c.b for c in study.claims} | {"vanilla"}
        results = {n: collect(where, n) for n in names}
        if not any(r.n for r in results.values()):
            old_rows = kept_summary_rows(old, study)
            rows += old_rows
            kept += [name] if old_rows else []
            continue
        with_runs.append(name)
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
    first = (with_runs or kept or list(studies))[0]
    page, fig = os.path.relpath(out, here), os.path.relpath(figure_path(out, first, "tokens"), here)
    src = ", ".join(f"`{shown(root_for(n, default, per))}`" for n in with_runs)
    lines = [
        f"Generated by `python -m experiments.report`{' from ' + src if src else ''} (the rule and the full "
        f"tables: [{page}]({page})).",
    ]
    if studies[0] not in with_runs + kept:
        lines += [f"The main study (`{studies[0]}`) has no finished runs yet: its rows appear as they land."]
    if kept:
        lines += [
            f"Rows of {', '.join(f'`{n}`' for n in kept)} are kept from the previous summary (no runs here), "
            "their verdicts re-judged by the current rule."
        ]
    return (
        "\n".join([*lines, "", *rows, "", f"![{REPORTABLE[first].title}: validation loss vs original tokens]({fig})"])
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


def _outside_block(text: str, name: str) -> bool:
    """The page holds the study's markers outside its results block (a part placed by hand)."""
    begin, end = study_markers(name)
    if begin not in text or end not in text:
        return False
    i = text.index(begin)
    return not (BEGIN in text and END in text and text.index(BEGIN) < i < text.index(END))


def write(root, out: str, studies: list[str], skip_missing: bool = False) -> str:
    """Write the page: its results block, and the parts of studies placed elsewhere on it."""
    old = None
    if os.path.isfile(out):
        with open(out) as f:
            old = f.read()
    placed = [n for n in studies if old and _outside_block(old, n)]
    default, per = parse_roots(root)
    text = old
    for name in placed:  # a part placed on the page by hand: replaced where it stands, with the rule
        begin, end = study_markers(name)
        body = part_text(name, root_for(name, default, per), out, skip_missing, old)
        text = (
            text[: text.index(begin) + len(begin)] + f"\n**Verdict rule.** {RULE}\n\n{body}\n" + text[text.index(end) :]
        )
    body = render(root, out, studies, skip_missing, old, placed)
    if text is not None and BEGIN in text and END in text and text.index(BEGIN) < text.index(END):
        text = text[: text.index(BEGIN) + len(BEGIN)] + "\n" + body + text[text.index(END) :]
    elif placed:  # parts placed by hand, no results block yet: it goes at the end
        text = f"{text.rstrip()}\n\n{BEGIN}\n{body}{END}\n"
    else:
        text = f"# Reproduction results\n\n{BEGIN}\n{body}{END}\n"
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        f.write(text)
    return text


def write_summary(root, out: str, studies: list[str], path: str) -> str:
    """Replace the summary between the markers in `path`; a ValueError if it has none."""
    old = None
    if os.path.isfile(path):
        with open(path) as f:
            old = f.read()
    text = _replace_between(path, SUMMARY_BEGIN, SUMMARY_END, summary(root, out, studies, path, old))
    if text is None:
        raise ValueError(
            f"--summary={path!r} is invalid: it must exist and hold the markers {SUMMARY_BEGIN} and {SUMMARY_END}"
        )
    with open(path, "w") as f:
        f.write(text)
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.report", description=__doc__.split("\n")[0])
    p.add_argument(
        "--root",
        default=None,
        help="every study's root DIR and/or STUDY=DIR items, comma-separated (default: "
        f"experiments/results/<study> when it exists, else {DEFAULT_ROOT})",
    )
    p.add_argument("--out", default="docs/reproduction.md")
    p.add_argument("--studies", default=",".join(DEFAULT_STUDIES))
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
    try:
        default, per = parse_roots(args.root)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in ([default] if default else []) + list(per.values()):
        if not os.path.isdir(path):
            print(f"error: --root={path!r} is invalid: no such directory (run a study first)", file=sys.stderr)
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
