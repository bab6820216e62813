"""Continuing a run with its full state: `init_from=WORKDIR/checkpoints/STEP` with `init_state="full"`.

A new workdir starts from the source checkpoint's whole TrainState (params, optimizer state,
step, nonfinite counter) and its data position, so the learning-rate schedule and the batches
go on where the source run was. Only the PHD fields of the model (`PHD_FIELDS`) and the keys a
resume may change (`checkpoint.RESUMABLE_CHANGES`) may differ from the source run's config: PHD
adds no parameters, so the state fits. Anything else (dimensions, optimizer, batch, sequence
length, data, seed) is refused by name. A resume of the new workdir starts from its own
checkpoints (init_from / init_state are then ignored, as for a resume after `init_state="params"`).

The new workdir's `continuation.json` says where it came from (`init_from`, `step`, the source's
`model` name) and the training FLOPs the source had spent by then (`flops`), so that the `flops`
of its metrics count the source's steps at the source model's cost and its own at its own.
"""

from __future__ import annotations

import json
import os

from phd_jax import paths
from phd_jax.errors import ConfigError
from phd_jax.train import checkpoint as ckpt
from phd_jax.train.config import load_run_config

# The model fields a full-state continuation may change (none of them shapes a parameter).
PHD_FIELDS = ("variant", "repeat", "window", "chunk", "position_mode")
MAY_CHANGE = frozenset(ckpt.RESUMABLE_CHANGES) | {f"model.{f}" for f in PHD_FIELDS}
INFO_FILE = "continuation.json"


def source_checkpoint(init_from: str) -> tuple[str, int]:
    """(source workdir, step) of `init_from`: a `WORKDIR/checkpoints/STEP` directory, or a
    WORKDIR (its latest complete checkpoint). Raises ConfigError naming config.init_from."""
    try:
        workdir, step = ckpt._locate(paths.absolute(init_from), None)
        mgr = ckpt.manager(workdir, read_only=True)
        try:
            steps = list(mgr.all_steps())
        finally:
            mgr.close()
    except ConfigError as e:
        raise ConfigError(f"config.init_from={init_from!r} is invalid: {e}") from None
    if step is None and steps:
        step = max(steps)
    if step is None or step not in steps:
        have = f"its checkpoints are at steps {sorted(steps)}" if steps else "it has no complete checkpoint"
        raise ConfigError(
            f"config.init_from={init_from!r} is invalid: no complete checkpoint"
            f"{'' if step is None else f' at step {step}'} in {workdir} ({have})"
        )
    return workdir, int(step)


def check_continuation(config, workdir: str) -> list[tuple[str, object, object]]:
    """The PHD fields that change from the run in `workdir` (as (key, old, new)); a ConfigError
    naming the first other key of `config` that differs from that run's config.json."""
    saved = load_run_config(workdir).to_dict()
    change = ckpt.first_change(saved, config, MAY_CHANGE)
    if change is not None:
        key, was, now = change
        raise ConfigError(
            f"config.{key}={now!r} differs from the run continued by config.init_state='full' "
            f"(config.init_from={config.init_from!r} has {was!r}): a continuation keeps that run's "
            f"parameters, optimizer state and data, so only model.{', model.'.join(PHD_FIELDS)} and "
            f"the keys a resume may change can differ (use config.init_state='params' to start a new "
            f"optimisation from its weights)"
        )
    old, new = saved.get("model", {}), config.model
    return [(f"model.{f}", old.get(f), new[f]) for f in PHD_FIELDS if f in old and old.get(f) != new[f]]


def restore_full(config, abstract, log=print):
    """(TrainState placed as `abstract` says, data iterator state, info for `INFO_FILE`) from the
    checkpoint `config.init_from` names; checks first (`check_continuation`), prints one line."""
    from phd_jax.flops import train_flops_per_sequence

    workdir, step = source_checkpoint(config.init_from)
    changes = check_continuation(config, workdir)
    mgr = ckpt.manager(workdir, read_only=True)
    try:
        state, data_state = ckpt.restore(mgr, step, abstract)
    except Exception as e:  # orbax raises many types for truncated or mismatched files
        raise ConfigError(
            f"config.init_from={config.init_from!r} is invalid: checkpoint {workdir}/{ckpt.CHECKPOINTS}/{step} "
            f"is unreadable or does not fit config.model ({type(e).__name__}: {str(e)[:300]})"
        ) from None
    finally:
        mgr.close()
    source = os.path.join(ckpt.shown_path(workdir), ckpt.CHECKPOINTS, str(step))
    changed = ", ".join(f"{k} {a!r} -> {b!r}" for k, a, b in changes) or "model unchanged"
    log(f"continuing {source} with its full state (step {step}, optimizer state, data position): {changed}")
    src_cfg = ckpt.load_model_config(workdir)
    info = {
        "init_from": os.path.join(workdir, ckpt.CHECKPOINTS, str(step)),
        "step": step,
        "model": src_cfg.name,
        "flops": step * int(config.batch_size) * train_flops_per_sequence(src_cfg, int(config.seq_len)),
    }
    return state, data_state, info


def write_info(workdir: str, info: dict):
    """`WORKDIR/continuation.json` (atomically)."""
    paths.write_atomic(os.path.join(workdir, INFO_FILE), json.dumps(info, indent=2) + "\n")


def flops_offset(workdir: str, flops_per_step: float) -> float:
    """What to add to `step * flops_per_step` for the FLOPs a run has spent by `step`: for a
    continuation, the source's FLOPs minus its steps counted at this run's cost; else 0."""
    path = os.path.join(workdir, INFO_FILE)
    if not paths.isfile(path):
        return 0.0
    info = json.loads(paths.read_text(path))
    return float(info["flops"]) - int(info["step"]) * flops_per_step
