"""One command line for every study (experiments/loss_vs_k.py etc. call `main(study_name)`).

    python -m experiments.loss_vs_k [--seeds=0,1,2] [--steps=400] [--root=runs/repro]
        [--results=experiments/results] [--config=configs/repro.py] [--only=NAME,...] [--dry-run]
        [--flops-per-s=X] [--config.KEY=VALUE ...]

`--dry-run` prints the grid (every run, its state and workdir) and the estimated time, and
trains nothing. `--config.KEY=VALUE` overrides reach every run (e.g. a bigger model on a GPU:
`--config.model.d_model=512 --config.model.num_layers=8 --config.batch_size=64`); with
another size, use another `--root`. `--results=DIR` keeps each finished run's result files in
DIR/<study>/<setting>/seed<k>/ and skips the runs found there (experiments/sweep.py); `--results=`
(empty) keeps none.
"""

from __future__ import annotations

import argparse
import os
import sys

from experiments import timing
from experiments.studies import COMMANDS, OTHER_STUDIES
from experiments.sweep import DEFAULT_CONFIG, DEFAULT_RESULTS, DEFAULT_ROOT, execute, plan
from phd_jax.errors import ConfigError
from phd_jax.hostmem import reexec_with_tuned_malloc

DEFAULT_STEPS = 250
DEFAULT_SEEDS = "0,1,2"


def parser(study: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m experiments.{study}",
        description=COMMANDS[study].title,
        epilog="Any --config.KEY=VALUE overrides that key of every run's config.",
    )
    p.add_argument("--seeds", default=DEFAULT_SEEDS, help="seeds: 0,1,2 or a range 0-2")
    p.add_argument(
        "--steps",
        type=int,
        default=COMMANDS[study].steps or DEFAULT_STEPS,
        help="training steps of a 1x setting (vanilla on Kx tokens trains K times as many)",
    )
    p.add_argument("--root", default=DEFAULT_ROOT, help="runs go to ROOT/<setting>/seed<k>")
    p.add_argument(
        "--results",
        default=DEFAULT_RESULTS,
        help="finished runs' result files go to RESULTS/<study>/<setting>/seed<k> (and are skipped "
        "when found there); empty: none",
    )
    p.add_argument("--config", default=DEFAULT_CONFIG, help="config file with get_config(paper_name)")
    p.add_argument("--only", default="", help="comma-separated setting names (default: the whole study)")
    p.add_argument("--dry-run", action="store_true", help="print the grid and the estimated time; train nothing")
    p.add_argument(
        "--flops-per-s",
        type=float,
        default=0.0,
        help="training FLOP/s for the time estimate (default: the calibration in experiments/timing.py)",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars (default: only on a terminal)",
    )
    return p


def parse_seeds(text: str) -> list[int]:
    """`0,1,2` or a range `0-4` (both ends included) -> distinct seeds >= 0."""
    seeds = []
    try:
        for part in str(text).split(","):
            part = part.strip()
            if not part:
                continue
            lo, _, hi = part.partition("-")
            seeds += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    except ValueError:
        raise ConfigError(f"--seeds={text!r} is invalid: comma-separated integers (0,1,2) or a range (0-2)") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ConfigError(f"--seeds={text!r} is invalid: one or more distinct integers >= 0 (0,1,2 or 0-2)")
    return seeds


def select(settings, only: str):
    if not only:
        return list(settings)
    names = [n.strip() for n in only.split(",") if n.strip()]
    known = {s.name: s for s in settings}
    for n in names:
        if n not in known:
            raise ConfigError(f"--only={n!r} is invalid: the study's settings are {', '.join(known)}")
    return [known[n] for n in names]


def main(study: str, argv: list[str] | None = None) -> int:
    if argv is None:  # the command line (never when called with arguments, e.g. from a test)
        reexec_with_tuned_malloc()
    argv = sys.argv[1:] if argv is None else list(argv)
    overrides = [a for a in argv if a.startswith("--config.")]
    args = parser(study).parse_args([a for a in argv if not a.startswith("--config.")])
    try:
        if args.steps < 1:
            raise ConfigError(f"--steps={args.steps} is invalid: must be >= 1")
        spec = COMMANDS[study]
        runs = plan(
            select(spec.settings, args.only),
            parse_seeds(args.seeds),
            args.steps,
            args.root,
            args.config,
            overrides,
            defaults=dict(spec.defaults),
            evals=spec.evals,
            results_root=os.path.join(args.results, study) if args.results else None,
        )
        calibration = timing.calibration(args.flops_per_s)
        print(f"study {study}: {COMMANDS[study].title}")
        result = execute(runs, calibration, dry_run=args.dry_run, progress=args.progress)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        return 0
    print(
        f"\n{len(result['trained'])} trained, {len(result['skipped'])} already finished, "
        f"{len(result['failed'])} failed; report: python -m experiments.report --root={args.root}"
        + (f" (or --root={os.path.join(args.results, study)})" if args.results else "")
        + (f" --studies={study}" if study in OTHER_STUDIES else "")
    )
    for label, message in result["failed"]:
        print(f"  failed {label}: {message}")
    if result.get("preempted"):
        print("stopped by SIGTERM before the end: rerun the same command to continue")
    return 1 if result["failed"] or result.get("preempted") else 0
