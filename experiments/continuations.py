"""Continuations in a sweep: a setting whose runs start from another setting's checkpoint with its
full state (`Setting.continue_from`, `Setting.continue_at`; experiments/sweep.py says how they run).

Planning checks that the source is in the sweep, in an earlier group, at the same seed, and
that the step is a checkpoint the source writes and keeps. Running: a source whose results are
saved but whose workdir is gone is trained again into the root (`sources_to_retrain`); any other
missing checkpoint fails the continuation with one line (`missing_source`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from phd_jax.errors import ConfigError

if TYPE_CHECKING:
    from experiments.sweep import Run, Setting


def source_setting(setting: Setting, by_name: dict, seed: int) -> Setting:
    name = f"setting {setting.name!r}: continue_from={setting.continue_from!r}"
    source = by_name.get(setting.continue_from)
    if source is None:
        raise ConfigError(
            f"{name} is not a setting of this sweep ({', '.join(by_name)}): include it (e.g. in --only); "
            f"its finished runs are skipped"
        )
    if source.group >= setting.group:
        raise ConfigError(f"{name} is invalid: the source's group ({source.group}) must come before {setting.group}")
    if source.seeds is not None and seed not in source.seeds:
        raise ConfigError(f"{name} is invalid: that setting has no seed {seed}")
    return source


def continuation_step(setting: Setting, source_config) -> int:
    """The source run's step at `setting.continue_at` of its steps: one of the checkpoints it
    writes (every `checkpoint_every` steps and at the end) and keeps (the last `keep_checkpoints`)."""
    total, every = int(source_config.num_steps), int(source_config.checkpoint_every)
    at = setting.continue_at * total
    written = sorted({*range(every, total + 1, every), total})
    kept = written[-int(source_config.keep_checkpoints) :]
    name = f"setting {setting.name!r}: continue_at={setting.continue_at!r}"
    if not (0 < at <= total) or at != int(at) or int(at) not in written:
        raise ConfigError(
            f"{name} is invalid: step {at:g} of {setting.continue_from}'s {total} is not one of its "
            f"checkpoints (every {every} steps: {', '.join(map(str, written))})"
        )
    if int(at) not in kept:
        raise ConfigError(
            f"{name} is invalid: {setting.continue_from} keeps only its last {len(kept)} checkpoints "
            f"({', '.join(map(str, kept))}), not step {int(at)}: raise its keep_checkpoints"
        )
    return int(at)


def _has_own_checkpoint(workdir: str) -> bool:
    path = os.path.join(workdir, "checkpoints")
    return os.path.isdir(path) and any(name.isdigit() for name in os.listdir(path))


def missing_source(run: Run) -> str | None:
    """Why a continuation cannot start (its source checkpoint is missing), or None."""
    if not run.setting.continue_from or _has_own_checkpoint(run.workdir) or os.path.isdir(run.config.init_from):
        return None
    source = os.path.dirname(os.path.dirname(run.config.init_from))
    return (
        f"needs {run.setting.continue_from} seed{run.seed}'s checkpoint {run.config.init_from}, which is "
        f"missing: rerun {run.setting.continue_from} seed{run.seed} into {source} (move that workdir away "
        f"first if it exists: it kept too few checkpoints), then this command"
    )


def sources_to_retrain(runs: list[Run], states: dict, log) -> set:
    """Workdirs of sources whose results are saved but whose checkpoint a continuation still to
    train needs and lacks (a fresh machine): trained again into the root before it."""
    out = set()
    by_workdir = {r.workdir: r for r in runs}
    for run in runs:
        if states[run.workdir] in ("finished", "saved") or not run.setting.continue_from:
            continue
        if _has_own_checkpoint(run.workdir) or os.path.isdir(run.config.init_from):
            continue
        source = by_workdir.get(os.path.dirname(os.path.dirname(run.config.init_from)))
        if source is not None and states[source.workdir] == "saved" and source.workdir not in out:
            out.add(source.workdir)
            log(
                f"{run.label} continues {source.label} from step {run.start_step}, whose results are saved "
                f"but whose workdir is not here: {source.label} is trained again into {source.workdir} "
                f"(its saved results are kept)"
            )
    return out
