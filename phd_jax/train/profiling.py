"""A `jax.profiler` trace of some training steps: `--config.profile_steps=START,END`.

The trace of steps START..END (data loading and the step itself, each step annotated with its
number) goes to `WORKDIR/profile/plugins/profile/<run>/`, the layout TensorBoard's profile
plugin reads (`tensorboard --logdir WORKDIR/profile`, Profile tab): `<host>.xplane.pb`, and
`perfetto_trace.json.gz`, which https://ui.perfetto.dev opens. A resumed run traces what is left
of the range; a run that stops inside it ends the trace there.
"""

from __future__ import annotations

import contextlib
import glob
import os

import jax

PROFILE_DIR = "profile"


class StepProfiler:
    """`begin(step)` before a step's data is read, `annotate(step)` around the step, `end(step,
    state)` once it is dispatched, `close()` at the end (stops a trace still running)."""

    def __init__(self, workdir: str, steps: tuple[int, int] | None, log=print):
        self.steps, self.log = steps, log
        self.dir = os.path.join(workdir, PROFILE_DIR)
        self.first = self.last = None  # the first and latest traced steps, while a trace runs
        self.done = False

    def begin(self, step: int):
        if self.steps is None or self.done or self.first is not None:
            return
        if self.steps[0] <= step <= self.steps[1]:
            jax.profiler.start_trace(self.dir, create_perfetto_trace=True)
            self.first = step

    def annotate(self, step: int):
        if self.first is None:
            return contextlib.nullcontext()
        return jax.profiler.StepTraceAnnotation("train", step_num=step)

    def end(self, step: int, state):
        if self.first is None:
            return
        self.last = step
        if step >= self.steps[1]:
            jax.block_until_ready(state)  # the trace holds the whole of the last step
            self._stop(step)

    def close(self):
        if self.first is not None:
            self._stop(self.last if self.last is not None else self.first)

    def _stop(self, last: int):
        jax.profiler.stop_trace()
        first, self.first, self.done = self.first, None, True
        runs = sorted(glob.glob(os.path.join(self.dir, "plugins", "profile", "*")), key=os.path.getmtime)
        where = runs[-1] if runs else self.dir
        from phd_jax.train.checkpoint import shown_path

        self.log(
            f"profiled steps {first}-{last}: trace in {shown_path(where)} "
            f"(tensorboard --logdir {shown_path(self.dir)}, Profile tab; or its perfetto_trace.json.gz "
            f"in ui.perfetto.dev)"
        )
