"""Time estimates for the sweeps, and the short timed runs they are calibrated on.

    python -m experiments.timing [--models=vanilla,PHD-2,PHD-4,naive-2] [--steps=40] [--config.KEY=VALUE ...]

trains each model for a few steps in a temporary directory (the study's config, the project's
trainer) and prints, per model, the wall time, the process's CPU time, the steady-state seconds
per step (from metrics.jsonl, compile excluded) and the analytic training FLOP/s.

Why CPU time: on a shared machine wall time measures the other users. The CPU seconds a
run burns do not depend much on them, and on an idle 2-core machine a run's wall time is
about its CPU time / 2 when XLA's two threads keep both cores busy; `IDLE_PARALLELISM`
below is that divisor, measured where the machine was idle enough (else 2 is an
upper bound: the estimate is then optimistic by at most that factor).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

# Measured with `python -m experiments.timing --steps=24` on 2026-11-24 while the machine was
# loaded (load average 19-21 on 2 cores, so wall times were ~8x the CPU times): steady-state
# CPU seconds per step vanilla 0.355, PHD-2 0.766, PHD-4 1.608, i.e. 38.0, 34.5 and 32.5 GFLOP
# of analytic training FLOPs per CPU-second; 8-14 CPU-seconds per run of start-up, compiles,
# evaluation and checkpoints (more for larger K).
GFLOPS_PER_CPU_S = 34.0
OVERHEAD_CPU_S = 12.0
# On an idle 2-core machine XLA's two threads keep both cores busy on the matmuls but not on
# everything else (Python, the data pipeline, small ops): wall = CPU time / IDLE_PARALLELISM.
# 1.5 is an assumption (not measurable on the loaded machine); 2 would be perfect scaling,
# 1 none: the estimate is right within x0.75 .. x1.5 of the printed time.
IDLE_PARALLELISM = 1.5
CALIBRATION = {
    "flops_per_s": GFLOPS_PER_CPU_S * 1e9 * IDLE_PARALLELISM,
    "overhead_s": OVERHEAD_CPU_S / IDLE_PARALLELISM,
    "naive_efficiency": 1.0,
    "description": (
        f"idle 2-core CPU at {GFLOPS_PER_CPU_S * IDLE_PARALLELISM:.0f} GFLOP/s, see experiments/timing.py; x0.75-x1.5"
    ),
}


def calibration(flops_per_s: float = 0.0) -> dict:
    """The calibration the estimates use (`flops_per_s` > 0 replaces the measured FLOP/s)."""
    out = dict(CALIBRATION)
    if flops_per_s and flops_per_s > 0:
        out["flops_per_s"] = float(flops_per_s)
        out["description"] = f"at {flops_per_s / 1e9:g} GFLOP/s from --flops-per-s"
    return out


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class _CpuAtSteps:
    """Polls the run's metrics.jsonl from a thread and records the process CPU time at which each
    logged step appeared, so the steady-state CPU seconds per step exclude compiles."""

    def __init__(self, path: str, interval: float = 0.05):
        import threading

        self.path, self.interval, self.points = path, interval, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self):
        seen = 0
        while not self._stop.is_set():
            try:
                with open(self.path) as f:
                    lines = [ln for ln in f.read().splitlines() if ln.strip()]
            except OSError:
                lines = []
            if len(lines) > seen:
                self.points.append((json.loads(lines[-1])["step"], _cpu_seconds(), time.perf_counter()))
                seen = len(lines)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def measure(models: list[str], steps: int, config_path: str, overrides: list[str], workroot: str) -> list[dict]:
    """Train each model `steps` steps (no evaluation until the end) and time it."""
    from experiments.sweep import Setting, plan
    from phd_jax.flops import train_flops_per_sequence
    from phd_jax.train import model_config, train_and_evaluate

    out = []
    for name in models:
        (run,) = plan([Setting(name=name, model=name)], [0], steps, workroot, config_path, overrides)
        c = run.config
        c.eval_every, c.log_every, c.checkpoint_every = steps, max(1, steps // 8), steps
        wall0, cpu0 = time.perf_counter(), _cpu_seconds()
        with _CpuAtSteps(os.path.join(run.workdir, "metrics.jsonl")) as probe:
            train_and_evaluate(c, run.workdir, progress=False)
        wall, cpu = time.perf_counter() - wall0, _cpu_seconds() - cpu0
        # steady state: from the first logged step to the one before the last (which also evaluates)
        (s0, c0, w0), (s1, c1, w1) = probe.points[0], probe.points[-2]
        cpu_step, wall_step = (c1 - c0) / (s1 - s0), (w1 - w0) / (s1 - s0)
        flops = int(c.batch_size) * train_flops_per_sequence(model_config(c), int(c.seq_len))
        out.append(
            {
                "model": name,
                "steps": steps,
                "wall_s": wall,
                "cpu_s": cpu,
                "wall_per_step_s": wall_step,
                "cpu_per_step_s": cpu_step,
                "overhead_cpu_s": cpu - steps * cpu_step,
                "flops_per_step": flops,
                "gflops_per_wall_s": flops / wall_step / 1e9,
                "gflops_per_cpu_s": flops / cpu_step / 1e9,
                "load_avg_1m": os.getloadavg()[0],
            }
        )
        print("TIMING " + json.dumps(out[-1]), flush=True)
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    overrides = [a for a in argv if a.startswith("--config.")]
    p = argparse.ArgumentParser(prog="python -m experiments.timing", description=__doc__.split("\n")[0])
    p.add_argument("--models", default="vanilla,PHD-2,PHD-4,naive-2")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--config", default="configs/repro.py")  # the shipped one unless ./configs/repro.py exists
    args = p.parse_args([a for a in argv if not a.startswith("--config.")])
    from phd_jax.errors import ConfigError

    try:
        with tempfile.TemporaryDirectory() as tmp:
            rows = measure(args.models.split(","), args.steps, args.config, overrides, tmp)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"\n{'model':<10} {'wall s/step':>11} {'cpu s/step':>10} {'GFLOP/cpu-s':>11} {'overhead cpu-s':>14} {'load':>5}"
    )
    for r in rows:
        print(
            f"{r['model']:<10} {r['wall_per_step_s']:11.3f} {r['cpu_per_step_s']:10.3f} "
            f"{r['gflops_per_cpu_s']:11.2f} {r['overhead_cpu_s']:14.1f} {r['load_avg_1m']:5.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
