"""K chosen at inference: every trained PHD-K run of a study evaluated with K' = 1 .. K+2 hidden
copies (issue 20, item 3). PHD adds no parameters, so its final checkpoint runs with any K'
(`phd_jax.evaluation.repeat`, the API behind `eval.py --repeat=K'`).

    python -m experiments.kprime --study=when_pays --root=RUNS [--results=experiments/results]
        [--seeds=0,1,2] [--only=NAME,...] [--extra=2] [--prompt=64] [--new-tokens=32] [--reps=3]

A separate step, run after the sweep (it needs the checkpoints, which are never committed; the
sweep keeps its runs as they were trained). For each finished PHD run ROOT/<setting>/seed<k>
(final checkpoint) it measures, in one process:
- the validation loss at each K' (the run's own validation batches, `evaluate_loss`: at K' = K
  it is the run's final `val_loss`);
- the decode speed at each K' (batch 1, greedy; as benchmarks/inference.py's `decode_latency`:
  a jitted scan of `--new-tokens` decode steps after a `--prompt`-token prefill), every K'
  compiled first, then timed in turns (K' = 1, 2, ..., `--reps` rounds; the median), so that a
  machine whose speed drifts slows every K' alike; as tokens/s and as a ratio to K' = 1.
It writes `kprime.json` (`KPRIME_FILE`) into the workdir and, with `--results`, into
RESULTS/<study>/<setting>/seed<k>/ next to the run's committed result files (the sweep copies it
too: it is one of experiments/sweep.py's RESULT_FILES). A run whose kprime.json is present (in
the results directory or in the workdir; one in the workdir is copied to the results directory
once that holds the run's results) is skipped, so the step can be rerun at any time. Runs that
cannot change K (vanilla, naive repetition, `position_mode="flat"`) are left out; the report
(experiments/report.py) tables and plots what is there.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

if __package__ in (None, ""):  # python experiments/kprime.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.studies import REPORTABLE  # noqa: E402
from experiments.sweep import DEFAULT_RESULTS, is_finished  # noqa: E402
from phd_jax.errors import ConfigError  # noqa: E402

KPRIME_FILE = "kprime.json"
EXTRA = 2  # K' runs 1 .. K + EXTRA
PROMPT, NEW_TOKENS, REPS = 64, 32, 5


def can_change_k(model: dict) -> bool:
    """A run whose K can change at inference (`phd_jax.evaluation.repeat.with_repeat`)."""
    return (
        model.get("variant") in ("phd", "phd_swa", "phd_cswa")
        and int(model.get("repeat", 1)) >= 2
        and model.get("position_mode", "shared") == "shared"
    )


def decode_runs(params, cfgs: dict, prompt: int, new_tokens: int):
    """{K': a function that decodes `new_tokens` greedily (batch 1) after a `prompt`-token prefill},
    each compiled (run once): benchmarks/inference.py's `greedy_decode_fn`, timed here in turns."""
    import jax

    from benchmarks.inference import greedy_decode_fn

    runs = {}
    for k, cfg in cfgs.items():
        runs[k] = greedy_decode_fn(cfg, params, prompt, new_tokens)
        jax.block_until_ready(runs[k]())  # compile
    return runs


def time_in_turns(runs: dict, reps: int) -> dict:
    """{K': median seconds of one call}, the K' timed in turns (K' = 1, 2, ..., then again) so that
    a machine whose speed drifts (other work, clocks) affects every K' alike."""
    import jax

    times = {k: [] for k in runs}
    for _ in range(reps):
        for k, run in runs.items():
            t0 = time.perf_counter()
            jax.block_until_ready(run())
            times[k].append(time.perf_counter() - t0)
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def measure(
    workdir: str, extra: int = EXTRA, prompt: int = PROMPT, new_tokens: int = NEW_TOKENS, reps: int = REPS, log=print
) -> dict:
    """The K' = 1 .. K+extra losses and decode speeds of the run's final checkpoint."""
    import jax

    from phd_jax.data import make_pipeline, make_tokenizer
    from phd_jax.evaluation.loss import evaluate_loss
    from phd_jax.evaluation.repeat import repeat_note
    from phd_jax.evaluation.run import resolve_run
    from phd_jax.train import restore_params
    from phd_jax.train.metrics import read_metrics

    trained_run = resolve_run(workdir)
    trained, config = trained_run.trained, trained_run.config
    _, params, step = restore_params(workdir, int(config.num_steps))
    tokenizer = make_tokenizer(config.data.tokenizer)
    prompt = max(1, min(prompt, trained.max_seq_len // 2))
    new_tokens = max(1, min(new_tokens, trained.max_seq_len - prompt - 2))
    cfgs, rows = {}, []
    for k in range(1, trained.repeat + extra + 1):
        cfgs[k] = resolve_run(workdir, step=step, repeat=k).model_config
        if k != trained.repeat:
            log("  " + repeat_note(trained, cfgs[k]))
        loss = evaluate_loss(params, cfgs[k], make_pipeline(config).eval_batches(), tokenizer)["loss"]
        rows.append({"repeat": k, "model": cfgs[k].name, "val_loss": loss})
        log(f"  K'={k}: val loss {loss:.4f}")
    seconds = time_in_turns(decode_runs(params, cfgs, prompt, new_tokens), reps)
    for r in rows:
        r["decode_tokens_per_s"] = new_tokens / seconds[r["repeat"]]
        r["speed_vs_k1"] = seconds[1] / seconds[r["repeat"]]
    log("  decode tokens/s: " + ", ".join(f"K'={r['repeat']} {r['decode_tokens_per_s']:.1f}" for r in rows))
    return {
        "model": trained.name,
        "trained_repeat": trained.repeat,
        "step": int(step),
        "final_val_loss": float(read_metrics(workdir)[-1]["val_loss"]),
        "decode": {
            "batch": 1,
            "prompt_tokens": prompt,
            "new_tokens": new_tokens,
            "reps": reps,
            "device": jax.devices()[0].device_kind,
        },
        "kprime": rows,
    }


def write_json(path: str, data: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=1)
    os.replace(path + ".tmp", path)


def run(study: str, root: str, results: str | None, seeds=None, only=None, log=print, **kw) -> dict:
    """Measure every finished PHD run of `study` under `root` that has no kprime.json yet.
    Returns {"measured": [...], "skipped": [...], "missing": [...]} (labels)."""
    spec = REPORTABLE[study]
    settings = [s for s in spec.settings if not only or s.name in only]
    out = {"measured": [], "skipped": [], "missing": []}
    for s in settings:
        for wd in sorted(_seed_dirs(os.path.join(root, s.name))):
            seed = int(os.path.basename(wd)[len("seed") :])
            if seeds is not None and seed not in seeds:
                continue
            label = f"{s.name} seed{seed}"
            with open(os.path.join(wd, "config.json")) as f:
                config = json.load(f)
            if not can_change_k(config["model"]):
                continue
            dest = os.path.join(results, study, s.name, f"seed{seed}") if results else wd
            if os.path.isfile(os.path.join(dest, KPRIME_FILE)):
                out["skipped"].append(label)
                continue
            if os.path.isfile(os.path.join(wd, KPRIME_FILE)):  # measured before its results were kept
                if os.path.isfile(os.path.join(dest, "config.json")):
                    shutil.copy2(os.path.join(wd, KPRIME_FILE), os.path.join(dest, KPRIME_FILE))
                out["skipped"].append(label)
                continue
            if not is_finished(wd, int(config["num_steps"])):
                out["missing"].append(label)
                continue
            log(f"{label}: K' = 1 .. {int(config['model']['repeat']) + kw.get('extra', EXTRA)} -> {dest}")
            data = measure(wd, log=log, **kw)
            write_json(os.path.join(wd, KPRIME_FILE), data)
            if dest != wd:
                if os.path.isfile(os.path.join(dest, "config.json")):
                    shutil.copy2(os.path.join(wd, KPRIME_FILE), os.path.join(dest, KPRIME_FILE))
                else:  # its results are not kept yet: the sweep copies kprime.json with them
                    log(f"  {dest} holds no results of this run yet: kprime.json stays in {wd}")
            out["measured"].append(label)
    return out


def _seed_dirs(path: str) -> list[str]:
    if not os.path.isdir(path):
        return []
    return [
        os.path.join(path, d)
        for d in os.listdir(path)
        if d.startswith("seed") and d[4:].isdigit() and os.path.isfile(os.path.join(path, d, "config.json"))
    ]


def load(path: str) -> dict | None:
    """A run directory's kprime.json, or None."""
    f = os.path.join(path, KPRIME_FILE)
    if not os.path.isfile(f):
        return None
    with open(f) as fh:
        return json.load(fh)


def main(argv=None) -> int:
    from experiments.cli import parse_seeds

    p = argparse.ArgumentParser(prog="python -m experiments.kprime", description=__doc__.split("\n")[0])
    p.add_argument("--study", default="when_pays", help=f"one of {', '.join(REPORTABLE)}")
    p.add_argument("--root", required=True, help="the sweep's --root: ROOT/<setting>/seed<k> with checkpoints")
    p.add_argument(
        "--results",
        default=DEFAULT_RESULTS,
        help="kprime.json also goes to RESULTS/<study>/<setting>/seed<k> (skipped when found there); empty: none",
    )
    p.add_argument("--seeds", default=None, help="only these seeds (0,1,2 or 0-2; default: every seed found)")
    p.add_argument("--only", default="", help="comma-separated setting names (default: every PHD setting)")
    p.add_argument("--extra", type=int, default=EXTRA, help="K' runs 1 .. K + EXTRA")
    p.add_argument("--prompt", type=int, default=PROMPT, help="decode speed: prompt tokens before decoding")
    p.add_argument("--new-tokens", type=int, default=NEW_TOKENS, help="decode speed: tokens decoded")
    p.add_argument("--reps", type=int, default=REPS, help="decode speed: median of this many timed runs")
    args = p.parse_args(argv)
    try:
        if args.study not in REPORTABLE:
            raise ConfigError(f"--study={args.study!r} is invalid: allowed {', '.join(REPORTABLE)}")
        if not os.path.isdir(args.root):
            raise ConfigError(f"--root={args.root!r} is invalid: no such directory (run the study first)")
        known = {s.name for s in REPORTABLE[args.study].settings}
        only = [n for n in args.only.split(",") if n]
        for n in only:
            if n not in known:
                raise ConfigError(f"--only={n!r} is invalid: the study's settings are {', '.join(sorted(known))}")
        for flag, v in (
            ("--extra", args.extra),
            ("--prompt", args.prompt),
            ("--new-tokens", args.new_tokens),
            ("--reps", args.reps),
        ):
            if v < (0 if flag == "--extra" else 1):
                raise ConfigError(f"{flag}={v} is invalid: must be >= {0 if flag == '--extra' else 1}")
        seeds = parse_seeds(args.seeds) if args.seeds else None
        out = run(
            args.study,
            args.root,
            args.results or None,
            seeds,
            only or None,
            extra=args.extra,
            prompt=args.prompt,
            new_tokens=args.new_tokens,
            reps=args.reps,
        )
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"{len(out['measured'])} measured, {len(out['skipped'])} already measured, "
        f"{len(out['missing'])} not finished" + (f" ({', '.join(out['missing'])})" if out["missing"] else "")
    )
    return 0


if __name__ == "__main__":
    from phd_jax.hostmem import reexec_with_tuned_malloc

    reexec_with_tuned_malloc()
    sys.exit(main())


# ---- the report's K' table (experiments/report.py) -----------------------------------------------


def summarise(results: dict) -> list[dict]:
    """One row per (setting, K') over the seeds with a kprime.json: mean ± std of the loss, the
    mean paired change against the trained K, the mean decode tokens/s and ratio to K' = 1."""
    import numpy as np

    rows = []
    for name, r in results.items():
        per_seed = {s: load(d) for s, d in sorted(r.dirs.items())}
        per_seed = {s: v for s, v in per_seed.items() if v}
        if not per_seed:
            continue
        trained = next(iter(per_seed.values()))["trained_repeat"]
        by_k = {}
        for s, data in per_seed.items():
            for row in data["kprime"]:
                by_k.setdefault(row["repeat"], {})[s] = row
        for k, seeds in sorted(by_k.items()):
            loss = np.array([v["val_loss"] for v in seeds.values()])
            base = by_k.get(trained, {})
            change = [seeds[s]["val_loss"] - base[s]["val_loss"] for s in seeds if s in base]
            rows.append(
                {
                    "setting": name,
                    "trained_repeat": trained,
                    "repeat": k,
                    "model": next(iter(seeds.values()))["model"],
                    "n": len(seeds),
                    "loss": float(loss.mean()),
                    "loss_std": float(loss.std(ddof=1)) if len(loss) > 1 else float("nan"),
                    "change": float(np.mean(change)) if change else float("nan"),
                    "tokens_per_s": float(np.mean([v["decode_tokens_per_s"] for v in seeds.values()])),
                    "speed_vs_k1": float(np.mean([v["speed_vs_k1"] for v in seeds.values()])),
                    "decode": next(iter(per_seed.values()))["decode"],
                }
            )
    return rows


def table(rows: list[dict]) -> str:
    from experiments.verdicts import fmt, signed

    out = [
        "| setting (trained K) | K' | evaluated as | n | val loss (mean ± std) | Δ vs K' = K "
        "| decode tokens/s | speed × K' = 1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        k = f"**{r['repeat']}**" if r["repeat"] == r["trained_repeat"] else str(r["repeat"])
        out.append(
            f"| {r['setting']} (K = {r['trained_repeat']}) | {k} | {r['model']} | {r['n']} | "
            f"{fmt(r['loss'])} ± {fmt(r['loss_std'])} | {signed(r['change'])} | {r['tokens_per_s']:.1f} | "
            f"{r['speed_vs_k1']:.2f} |"
        )
    return "\n".join(out)
