"""Two revisions of phd-jax timed against each other in one interleaved run: train step and generation.

A refactor must not cost speed. Separate runs on a shared 2-core machine drift by more than the
effect looked for, so this runs one long-lived worker process per revision
(`benchmarks/revision_worker.py`, with that revision's checkout first on `sys.path`), has both
compile the same models, then alternates their measurements round by round (A B, then B A, ...):
drift hits both alike. Reported: each revision's median, and the median and range of the
per-round ratio head / base (train: step time; generation: tokens/s).

    python benchmarks/compare_revisions.py --base ae4d404 --head HEAD
    python benchmarks/compare_revisions.py --base ../old-checkout --head . --rounds 9 --out results.md

A revision is a git revision of this repository (checked out into a temporary worktree, removed
afterwards) or the path of a checkout. Both workers run with the same environment, including the
malloc tuning of the command-line programs (`GLIBC_TUNABLES`, phd_jax/hostmem.py).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "benchmarks", "revision_worker.py")
# The model: configs/repro.py's shape at d_model 256 (the study's size), bytes.
DIMS = dict(
    vocab_size=256, num_layers=4, d_model=256, num_heads=4, num_kv_heads=2, head_dim=64, mlp_dim=768, max_seq_len=256
)
# glibc malloc as the command lines tune it (one arena, no mmap, no trim): see phd_jax/hostmem.py.
TUNABLES = "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4611686018427387904"


@contextlib.contextmanager
def checkout(revision: str):
    """The path of a checkout of `revision` (a path as it is, or a git revision in a temporary worktree)."""
    if os.path.isdir(revision):
        yield os.path.abspath(revision)
        return
    with tempfile.TemporaryDirectory(prefix="phd_jax_rev_") as tmp:
        path = os.path.join(tmp, "checkout")
        subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", "-q", path, revision], check=True)
        try:
            yield path
        finally:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", path], check=False)


class Worker:
    def __init__(self, label: str, path: str, setup: dict, env: dict):
        self.label, self.path = label, path
        self.proc = subprocess.Popen(
            [sys.executable, WORKER],
            cwd=path,
            env={**env, "PYTHONPATH": path},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.ask(setup)

    def ask(self, request: dict) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the worker of {self.label} ({self.path}) stopped; its error is above")
        return json.loads(line)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _git(path: str, *args) -> str:
    out = subprocess.run(["git", "-C", path, *args], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else "?"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", required=True, help="git revision or checkout path: the reference")
    p.add_argument("--head", default=".", help="git revision or checkout path (default: this checkout)")
    p.add_argument("--variants", default="vanilla,PHD-2,PHD-CSWA-2-16-32")
    p.add_argument("--seq", type=int, default=128, help="training sequence length (original tokens)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=3, help="train steps per measurement")
    p.add_argument("--gen-batch", type=int, default=8)
    p.add_argument("--gen-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--out", help="also write the markdown report here")
    args = p.parse_args(argv)
    if min(args.rounds, args.steps, args.batch, args.gen_batch, args.gen_tokens) < 1:
        p.error("--rounds, --steps, --batch, --gen-batch and --gen-tokens must be >= 1")
    variants = [v for v in args.variants.split(",") if v]
    setup = dict(
        dims=DIMS,
        variants=variants,
        batch=args.batch,
        seq=args.seq,
        gen_batch=args.gen_batch,
        gen_tokens=args.gen_tokens,
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR")}
    env.update(GLIBC_TUNABLES=TUNABLES, JAX_PLATFORMS="cpu", PHD_JAX_TUNE_MALLOC="0")
    ops = [(op, v) for v in variants for op in ("train", "generate")]
    with checkout(args.base) as base_path, checkout(args.head) as head_path:
        labels = {"base": f"{args.base} ({_git(base_path, 'rev-parse', '--short', 'HEAD')})"}
        labels["head"] = f"{args.head} ({_git(head_path, 'rev-parse', '--short', 'HEAD')})"
        print(f"compiling: base {labels['base']}, head {labels['head']}", flush=True)
        workers = {"base": Worker("base", base_path, setup, env), "head": Worker("head", head_path, setup, env)}
        values = {(side, op, v): [] for side in workers for op, v in ops}
        for rnd in range(args.rounds + 1):  # round 0 warms up (first runs, heap growth) and is dropped
            order = ("base", "head") if rnd % 2 else ("head", "base")
            for op, v in ops:
                for side in order:
                    value = workers[side].ask({"op": op, "variant": v, "steps": args.steps})["value"]
                    if rnd:
                        values[side, op, v].append(value)
            print(f"round {rnd}/{args.rounds} done", flush=True)
        for w in workers.values():
            w.close()
    rows = []
    for op, v in ops:
        base, head = values["base", op, v], values["head", op, v]
        ratios = [h / b for h, b in zip(head, base)]
        unit, scale = ("ms / step", 1e3) if op == "train" else ("tokens/s", 1.0)
        rows.append(
            f"| {v} | {op} ({unit}) | {statistics.median(base) * scale:.4g} | {statistics.median(head) * scale:.4g} "
            f"| {statistics.median(ratios):.3f} | {min(ratios):.3f}-{max(ratios):.3f} |"
        )
    report = "\n".join(
        [
            f"# Revisions compared: head {labels['head']} vs base {labels['base']}",
            "",
            f"{datetime.date.today()}, {platform.machine()}, {os.cpu_count()} CPUs; model {DIMS}; "
            f"train batch {args.batch} x {args.seq}, {args.steps} steps per measurement; generation batch "
            f"{args.gen_batch}, {args.gen_tokens} tokens after a {args.seq // 2}-token prompt; "
            f"{args.rounds} interleaved rounds after one warm-up round.",
            "",
            "| model | measure | base | head | head / base (median) | per-round range |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            "`python benchmarks/compare_revisions.py " + " ".join(argv if argv is not None else sys.argv[1:]) + "`",
        ]
    )
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report + "\n")


if __name__ == "__main__":
    main()
