"""The workdir: its JSON files, orbax checkpoints (state + data position), and reading them back.

    WORKDIR/config.json          the full run config
    WORKDIR/model_config.json    the ModelConfig fields (rebuild the model from the workdir alone)
    WORKDIR/version.json         phd_jax version and git commit that wrote it
    WORKDIR/checkpoints/<step>/  orbax: `state` (a TrainState's fields: step, params, opt_state,
                                 nonfinite) and `data` (the data iterator's position)
    WORKDIR/metrics.jsonl, WORKDIR/tensorboard/   (phd_jax.train.metrics)
    WORKDIR/continuation.json    a full-state continuation's source (phd_jax.train.continuation)
    WORKDIR/profile/             config.profile_steps' jax.profiler trace (TensorBoard's layout)

A checkpoint is complete once orbax renames its temporary directory to `<step>`; a run
killed while saving leaves only the temporary one, which restore ignores. On an object store
(gs://: no rename) orbax writes `<step>/` in place and marks it complete with
`<step>/commit_success.txt`; a step without it is ignored the same way. Every path goes through
phd_jax.paths, so a `gs://` workdir works like a local one; on gs:// `metrics.jsonl` is written as
segments under `metrics.jsonl.d/` (phd_jax.train.metrics). A damaged newest checkpoint is
skipped on resume and moved aside to `checkpoints/<step>.damaged` (`restore_newest`,
phd_jax.train.restore).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess

import jax
import numpy as np

from phd_jax import paths
from phd_jax.config import ModelConfig, canonical_field
from phd_jax.errors import ConfigError
from phd_jax.model import check_params
from phd_jax.train import restore as restore_lib
from phd_jax.train.config import load_run_config, to_json
from phd_jax.train.optimizer import decay_patterns
from phd_jax.train.restore import RestoreError, describe, incomplete_reason, is_transient
from phd_jax.train.state import TrainState
from phd_jax.tree import path_name

CHECKPOINTS = "checkpoints"
OUR_FILES = (
    "config.json",
    "model_config.json",
    "version.json",
    CHECKPOINTS,
    "metrics.jsonl",
    "metrics.jsonl.d",
    "tensorboard",
    "continuation.json",  # phd_jax.train.continuation.INFO_FILE
    "profile",  # PROFILE_DIR: config.profile_steps' trace
)

# Keys that may differ when a run resumes (everything else describes the model, the data or
# the optimisation, and must match the saved run).
RESUMABLE_CHANGES = {
    "num_steps",
    "mesh",
    "logical_axis_rules",
    "grad_accum_steps",
    "skip_nonfinite",
    "checkpoint_every",
    "keep_checkpoints",
    "async_checkpointing",
    "init_from",
    "init_state",  # init_* only shape a new run's step 0; a resume starts from its own checkpoint
    "profile_steps",  # a trace of some steps: observes the run, changes nothing in it
    "log_every",
    "eval_every",
    "eval_batches",
    "peak_tflops",
    "compilation_cache",
    "sample_prompt",
    "sample_tokens",
    "model.attention",
    "model.block_q",
    "model.block_kv",
    "model.remat",
    "data.data_dir",
    "data.cache_dir",
    "data.num_threads",
    "data.prefetch",  # where / how fast, not what
    "data.decode_errors",  # strict only refuses what replace reads: the same tokens when both read a file
}


def shown_path(path: str) -> str:
    """`path` as printed for the user: relative to the working directory when it lies under it
    (`runs/default`), else absolute; a URL (gs://...) as is."""
    return paths.shown(path)


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _norm(v):
    return json.loads(json.dumps(v, default=list))


def _canonical(flat: dict) -> dict:
    """Model fields in today's spelling (`model.qk_norm: false` of a phd_jax <= 0.2 run is "none"),
    and `weight_decay_exclude` as its set of patterns, less "bias" on a model without biases (a
    run saved before 0.3.1, whose default lacked it, decays exactly the same parameters)."""
    out = {k: canonical_field(k[len("model.") :], v) if k.startswith("model.") else v for k, v in flat.items()}
    pats = out.get("weight_decay_exclude")
    if isinstance(pats, str):
        keep = set(decay_patterns(pats))
        if not out.get("model.qkv_bias", False):
            keep.discard("bias")
        out["weight_decay_exclude"] = ",".join(sorted(keep))
    return out


def first_change(saved: dict, config, may_change) -> tuple[str, object, object] | None:
    """The first key (sorted, dotted: `model.d_model`) whose value in `config` differs from the
    saved run config `saved` (a dict), as (key, saved value, new value); None if none does. Keys
    in `may_change` (or under a section named there) are skipped; so are a key a newer phd_jax
    added, left at its default (the old run used that behaviour), and a key this version dropped."""
    from phd_jax.train.config import base_config

    old, new = (_canonical(_flatten(_norm(c))) for c in (saved, config.to_dict()))
    defaults = _flatten(_norm(base_config().to_dict()))
    for key in sorted(set(old) | set(new)):
        if key in may_change or key.split(".")[0] in may_change:
            continue
        if key not in old and key in defaults and new.get(key) == defaults[key]:
            continue
        if key not in new:
            continue
        if old.get(key, "<absent>") != new.get(key, "<absent>"):
            return key, old.get(key, "<absent>"), new[key]
    return None


def check_workdir(workdir: str, config):
    """Raise ConfigError if `workdir` holds something we did not write or another run.
    Returns the saved run config (a dict) when it holds a run of this config (to be resumed),
    else None. Writes nothing."""
    paths.refresh(workdir)
    if paths.isfile(workdir) or (paths.exists(workdir) and not paths.isdir(workdir)):
        raise ConfigError(f"workdir={workdir!r} is invalid: it exists and is not a directory")
    cfg_path = os.path.join(workdir, "config.json")
    if not paths.exists(cfg_path):
        for name in OUR_FILES:
            if paths.exists(os.path.join(workdir, name)):
                raise ConfigError(
                    f"workdir={workdir!r} is invalid: it holds {name!r} but no config.json, "
                    f"so it was not written by phd_jax training; choose another --workdir"
                )
        return None
    try:
        saved = load_run_config(workdir).to_dict()
        assert isinstance(saved.get("model"), dict)
    except Exception:
        raise ConfigError(
            f"workdir={workdir!r} is invalid: its config.json is not a phd_jax run config; choose another --workdir"
        ) from None
    ckpt = os.path.join(workdir, CHECKPOINTS)
    if paths.exists(ckpt) and not paths.isdir(ckpt):
        raise ConfigError(f"workdir={workdir!r} is invalid: {ckpt} is a file, not phd_jax's checkpoint directory")
    change = first_change(saved, config, RESUMABLE_CHANGES)
    if change is not None:
        key, was, now = change
        raise ConfigError(
            f"config.{key}={now!r} does not match the run in workdir={workdir!r} "
            f"(saved: {was!r}); it describes another model or optimisation, so it "
            f"cannot resume there: use another --workdir, or the saved value"
        )
    return saved


def version_info() -> dict:
    import phd_jax

    here = os.path.dirname(os.path.dirname(os.path.abspath(phd_jax.__file__)))
    commit = dirty = None
    # A read-only look: no index.lock (a `git status` alongside the user's own git commands, or one
    # that fails to write, e.g. on a full disk, would leave one behind or collide with theirs).
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")
    try:
        commit = (
            subprocess.run(
                ["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, env=env
            ).stdout.strip()
            or None
        )
        if commit:
            dirty = bool(
                subprocess.run(
                    ["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                    capture_output=True,
                    text=True,
                    timeout=10,
                    env=env,
                ).stdout.strip()
            )
    except (OSError, subprocess.SubprocessError):
        pass
    version = getattr(phd_jax, "__version__", None)
    if version is None:
        try:
            from importlib.metadata import version as _v

            version = _v("phd_jax")
        except Exception:
            version = "unknown"
    return {"phd_jax": version, "git_commit": commit, "git_dirty": dirty, "jax": jax.__version__}


def write_run_files(workdir: str, config, cfg: ModelConfig):
    """config.json, model_config.json, version.json (each written atomically: one whole object
    each on an object store)."""
    paths.makedirs(workdir)
    for name, text in (
        ("config.json", to_json(config)),
        ("model_config.json", json.dumps(dataclasses.asdict(cfg), indent=2)),
        ("version.json", json.dumps(version_info(), indent=2)),
    ):
        paths.write_atomic(os.path.join(workdir, name), text + "\n")


def load_model_config(workdir: str) -> ModelConfig:
    path = os.path.join(workdir, "model_config.json")
    if not paths.isfile(path):
        raise ConfigError(f"workdir={workdir!r} is invalid: no model_config.json (not a phd_jax training run)")
    return ModelConfig(**json.loads(paths.read_text(path)))


def manager(workdir: str, config=None, read_only: bool = False):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if config is None else int(config.keep_checkpoints),
        enable_async_checkpointing=bool(config is not None and config.async_checkpointing),
        create=not read_only,
    )
    return ocp.CheckpointManager(paths.absolute(os.path.join(workdir, CHECKPOINTS)), options=options)


def save(mgr, step: int, state: TrainState, data_state: dict, force: bool = True):
    """Write `state` (as the dict of its fields) and the data iterator's state at `step`."""
    import orbax.checkpoint as ocp

    mgr.save(
        step,
        args=ocp.args.Composite(state=ocp.args.PyTreeSave(state.to_tree()), data=ocp.args.JsonSave(data_state)),
        force=force,
    )


def restore(mgr, step: int, abstract: TrainState) -> tuple[TrainState, dict]:
    """(state placed as `abstract`'s shardings say, data iterator state). Entries of the saved
    tree that TrainState no longer has (0.1.0's `rng`) stay on disk."""
    import orbax.checkpoint as ocp

    target = abstract.to_tree()
    restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding), target)
    out = mgr.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True),
            data=ocp.args.JsonRestore(),
        ),
    )
    return TrainState.from_tree(out["state"]), out["data"]


def restore_newest(workdir: str, abstract: TrainState, log=print):
    """(step, (state, data state)) from the newest checkpoint that restores, None if there is
    none yet. A damaged newer one is skipped with a one-line notice and, once the restore
    succeeded, moved aside to `checkpoints/<step>.damaged` (by process 0; the others wait).
    Raises RestoreError (nothing changed) if none restores or a transient error persists."""
    directory = os.path.join(workdir, CHECKPOINTS)
    if not paths.isdir(directory):
        return None
    reader = manager(workdir, read_only=True)
    try:
        found = restore_lib.restore_newest(
            directory, reader.all_steps(), lambda step: restore(reader, step, abstract), log, shown_path(workdir)
        )
    finally:
        reader.close()
    if found is None:
        return None
    step, value, skipped = found
    if jax.process_index() == 0:
        for bad, _ in skipped:
            moved = restore_lib.move_aside(directory, bad)
            log(f"moved damaged checkpoint {bad} aside to {shown_path(os.fspath(moved))}")
    restore_lib.sync_processes("phd_jax_damaged_moved_aside")
    return step, value


def _locate(path: str, step: int | None) -> tuple[str, int | None]:
    path = paths.absolute(path)
    if paths.isfile(os.path.join(path, "config.json")):
        return path, step
    parent = os.path.dirname(path)
    if os.path.basename(parent) == CHECKPOINTS and os.path.basename(path).isdigit():
        workdir = os.path.dirname(parent)
        if paths.isfile(os.path.join(workdir, "config.json")):
            if step is not None and step != int(os.path.basename(path)):
                raise ConfigError(f"step={step} is invalid: the path names checkpoint step {os.path.basename(path)}")
            return workdir, int(os.path.basename(path))
    raise ConfigError(
        f"checkpoint path {path!r} is invalid: expected a training workdir (with config.json) "
        f"or one of its checkpoints/<step> directories"
    )


def restore_params(path: str, step: int | None = None, sharding=None):
    """(ModelConfig, params, step) from a workdir (latest checkpoint, or `step`) or a
    `WORKDIR/checkpoints/<step>` directory. Reads only the parameters (not the optimizer
    state), placed on `sharding` (default: the first local device), checked against the
    saved model config."""
    import orbax.checkpoint as ocp

    from phd_jax.model import param_shapes

    workdir, step = _locate(path, step)
    cfg = load_model_config(workdir)
    mgr = manager(workdir, read_only=True)
    try:
        steps = mgr.all_steps()
        if not steps:
            raise ConfigError(f"workdir={workdir!r} has no complete checkpoint yet")
        latest = step is None
        if step is None:
            step = max(steps)
        elif step not in steps:
            raise ConfigError(f"step={step} is invalid: checkpoints in {workdir} are at steps {sorted(steps)}")
        where = f"{workdir}/{CHECKPOINTS}/{step}" + (" (the latest)" if latest else "")
        others = sorted(s for s in steps if s != step)
        hint = f"; pick another with --step (steps: {', '.join(map(str, others))})" if latest and others else ""
        reason = incomplete_reason(os.path.join(workdir, CHECKPOINTS, str(step)))
        if reason:
            raise ConfigError(f"checkpoint {where} is damaged: {reason}{hint}")
        _check_saved_params(workdir, step, cfg)
        sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        shapes = param_shapes(cfg)
        target = {"params": jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), shapes)}
        restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=sharding), target)
        try:
            out = mgr.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)
                ),
            )
        except Exception as e:  # orbax raises many types for truncated or mismatched files
            if is_transient(e):
                raise RestoreError(
                    f"cannot read checkpoint {where}: {describe(e)}; this looks transient (I/O, "
                    f"permissions, memory): fix the cause and try again"
                ) from None
            raise ConfigError(
                f"checkpoint {where} is damaged or does not match model {cfg.name} ({describe(e)}){hint}"
            ) from None
    finally:
        mgr.close()
    params = out["state"]["params"]
    try:
        check_params(params, cfg)
        missing = [path_name(p) for p, x in jax.tree_util.tree_leaves_with_path(params) if not isinstance(x, jax.Array)]
        if missing:  # a partial restore leaves what the checkpoint lacks unfilled
            raise ValueError(f"params missing from the checkpoint: {', '.join(missing[:3])}")
    except (TypeError, ValueError) as e:
        raise ConfigError(
            f"checkpoint {workdir}/{CHECKPOINTS}/{step} does not match model_config.json ({cfg.name}): {e}"
        ) from None
    return cfg, params, int(step)


def _check_saved_params(workdir: str, step: int, cfg: ModelConfig):
    """The parameter tree saved at `step` (read from orbax's metadata, no arrays) against `cfg`:
    a ConfigError naming the fields that differ (a checkpoint of another block option, say),
    before a partial restore would leave the parameters it lacks unfilled."""
    import orbax.checkpoint as ocp
    from etils import epath

    try:
        meta = ocp.PyTreeCheckpointHandler().metadata(epath.Path(workdir) / CHECKPOINTS / str(step) / "state")
        saved = (meta.tree if hasattr(meta, "tree") else meta)["params"]
    except Exception:  # unreadable metadata: the restore below reports the checkpoint
        return
    try:
        check_params(saved, cfg)
    except (TypeError, ValueError) as e:
        raise ConfigError(
            f"checkpoint {workdir}/{CHECKPOINTS}/{step} does not match model_config.json ({cfg.name}): {e}"
        ) from None


def abstract_state(params_shape, opt_shape, shardings: TrainState) -> TrainState:
    """The trainer's state as ShapeDtypeStructs carrying target shardings (for restore)."""
    sds = lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)  # noqa: E731
    return TrainState(
        step=jax.ShapeDtypeStruct((), np.int32, sharding=shardings.step),
        params=jax.tree.map(sds, params_shape, shardings.params),
        opt_state=jax.tree.map(sds, opt_shape, shardings.opt_state),
        nonfinite=jax.ShapeDtypeStruct((), np.int32, sharding=shardings.nonfinite),
    )
