"""`train.py` as a subprocess on the tiny config, shared by tests/test_train_resume.py and
tests/test_gcs.py (the `reference` run itself is a session fixture in conftest.py)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 20
ARGS = [
    "--config=configs/tiny.py",
    f"--config.num_steps={STEPS}",
    "--config.log_every=1",
    "--config.checkpoint_every=5",
    "--config.eval_every=10",
    "--config.keep_checkpoints=5",
    "--progress=false",
]

# Runs train.py in this process after installing one fault (FAULT, FAULT_STEP in the environment).
FAULTY = r"""
import os, runpy, signal, sys
fault, at = os.environ["FAULT"], int(os.environ["FAULT_STEP"])
die = lambda sig: os.kill(os.getpid(), sig)
if fault == "kill_after_save":       # SIGKILL once the checkpoint of step `at` is complete
    from phd_jax.train import checkpoint as ck
    orig_save = ck.save
    def save(mgr, step, *a, **k):
        orig_save(mgr, step, *a, **k)
        if step == at:
            mgr.wait_until_finished()
            die(signal.SIGKILL)
    ck.save = save
elif fault == "kill_during_save":    # SIGKILL inside the async save of step `at`, before its commit
    from orbax.checkpoint._src.path import atomicity
    orig_finalize = atomicity.AtomicRenameTemporaryPath.finalize
    async def finalize(self, *a, **k):
        if self.get_final().name == str(at):
            die(signal.SIGKILL)
        return await orig_finalize(self, *a, **k)
    atomicity.AtomicRenameTemporaryPath.finalize = finalize
elif fault == "term_in_sample":     # SIGTERM while the sample after training is generated
    import phd_jax.sampling as S
    orig_generate = S.generate
    def generate(*a, **k):
        die(signal.SIGTERM)
        return orig_generate(*a, **k)
    S.generate = generate
elif fault in ("term", "int"):       # SIGTERM (preemption) or Ctrl-C right after step `at`
    sig = signal.SIGTERM if fault == "term" else signal.SIGINT
    signal.signal(signal.SIGINT, signal.default_int_handler)   # as in a terminal, even if started in the background
    from phd_jax.train import metrics as M
    orig_update = M.MetricWriter.update
    def update(self, step):
        orig_update(self, step)
        if step == at:
            die(sig)
    M.MetricWriter.update = update
sys.argv = ["train.py"] + sys.argv[1:]
runpy.run_path("train.py", run_name="__main__")
"""


def train(workdir, *extra, fault=None, env=None, timeout=600):
    cmd = [sys.executable, "train.py", f"--workdir={workdir}", *ARGS, *extra]
    if fault:
        cmd[1:2] = ["-c", FAULTY]
    full_env = dict(os.environ, **(env or {}))
    if fault:
        full_env.update(FAULT=fault[0], FAULT_STEP=str(fault[1]))
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=full_env)


def metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def final_params(workdir):
    from phd_jax.train import restore_params

    return restore_params(workdir)
