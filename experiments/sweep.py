"""The sweep machinery shared by every study: settings -> run configs -> workdirs -> training.

A *setting* is one model + training length (`PHD-SWA-2-16-inf`, `vanilla-x2tokens`,
`vanilla-depth-PHD-2`); a *run* is a setting at one seed, trained by the project's own
`phd_jax.train.train_and_evaluate` in its own workdir:

    ROOT/<setting>/seed<k>/        config.json, checkpoints/, metrics.jsonl, tensorboard/

Settings are shared between studies by name (the vanilla baseline of the loss-vs-K study is
the one the FLOP-matched study compares with), so a setting is trained once per seed.

Results: with a results directory (`--results`, default experiments/results in the repository),
a run's small result files (`RESULT_FILES`: metrics.jsonl, config.json, model_config.json,
version.json, and kprime.json once experiments/kprime.py measured it; never checkpoints or
tensorboard) are copied to RESULTS/<study>/<setting>/seed<k>/
when it finishes, and a later sweep skips a run whose results are there (state `saved`), even on
a fresh machine without its workdir. The report reads such a directory like a root of workdirs.

Continuations: a setting with `continue_from` (the name of another setting of the study, trained
at the same seed) starts from that run's checkpoint at `continue_at` of its steps with its full
state (`init_from=ROOT/<source>/seed<k>/checkpoints/<step>`, `init_state=full`: optimizer state,
step, schedule and data position; docs/training.md), in a later `group`. The checkpoint must be
one the source writes and keeps (`checkpoint_every`, `keep_checkpoints`), checked when planning.
When the source's results are saved but its workdir (and so the checkpoint) is gone, e.g. on a
fresh machine with only the committed results, the sweep retrains the source into ROOT first (one
line says so), keeping its saved results as they are; any other missing checkpoint fails the
continuation with one line naming the source run to rerun.

Resuming: a run is *finished* when its `metrics.jsonl` ends at `num_steps` with a validation
loss and `checkpoints/<num_steps>` exists; a rerun skips it. Any other run with a config.json
is continued from its latest checkpoint (what `train_and_evaluate` does for an existing
workdir). A workdir trained with another config (another size, another step count) is an
error naming the key, never silently overwritten or extended: pick another `--root`.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import math
import os
import time

from experiments.continuations import continuation_step, missing_source, source_setting, sources_to_retrain
from phd_jax import configs, paths
from phd_jax.errors import ConfigError, fail

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = configs.resolve("configs/repro.py")
DEFAULT_ROOT = "runs/repro"
DEFAULT_RESULTS = os.path.join(REPO, "experiments", "results")


@dataclasses.dataclass(frozen=True)
class Setting:
    """One model and training length. `model` is the paper name given to the config file;
    `steps_factor` multiplies the study's step count (vanilla on K times the tokens);
    `match_flops_of` names a paper model whose training FLOPs per sequence this (vanilla)
    setting matches by choosing `model.num_layers` (`phd_jax.flops`)."""

    name: str
    model: str
    steps_factor: int = 1
    match_flops_of: str | None = None
    overrides: tuple = ()  # ((dotted key, value), ...) fixed by the study
    group: int = 0  # runs go group by group (each seed-major), in increasing group
    seeds: tuple | None = None  # only these of the sweep's seeds (None: every seed)
    continue_from: str | None = None  # a setting (same study, same seed) whose run this one continues
    continue_at: float = 0.5  # ... from its checkpoint at this fraction of its steps


@dataclasses.dataclass
class Run:
    setting: Setting
    seed: int
    config: object  # the full ml_collections run config
    workdir: str
    results_dir: str | None = None  # where its result files are copied when it finishes
    start_step: int = 0  # a continuation starts after its source's checkpoint at this step

    @property
    def label(self) -> str:
        return f"{self.setting.name} seed{self.seed}"


# ---- configs ------------------------------------------------------------------------------------


def load_config_module(path: str):
    path = os.path.abspath(configs.resolve(path))
    if not os.path.isfile(path):
        fail("--config", path, "no such config file (e.g. configs/repro.py)", ConfigError)
    spec = importlib.util.spec_from_file_location(f"_sweep_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        fail("--config", path, "has no get_config(name) function", ConfigError)
    return module


def parse_value(key: str, text: str, current):
    """`text` from the command line as the type of the config's current value."""
    name = f"--config.{key}"
    if isinstance(current, bool):
        low = text.lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        fail(name, text, "must be true or false", ConfigError)
    if isinstance(current, int):
        try:
            return int(text)
        except ValueError:
            fail(name, text, "must be an integer", ConfigError)
    if isinstance(current, float):
        try:
            return float(text)
        except ValueError:
            fail(name, text, "must be a number", ConfigError)
    if isinstance(current, (list, tuple)):
        try:
            return json.loads(text)
        except ValueError:
            fail(name, text, "must be a JSON list", ConfigError)
    return text


def set_key(config, key: str, value, source: str = "--config"):
    """Set a dotted key of a ConfigDict; unknown keys are an error naming the key."""
    node, parts = config, key.split(".")
    for part in parts[:-1]:
        if part not in node:
            fail(f"{source}.{key}", value, f"{part!r} is not a config section", ConfigError)
        node = node[part]
    if parts[-1] not in node:
        fail(f"{source}.{key}", value, "is not a config key", ConfigError)
    node[parts[-1]] = value


def get_key(config, key: str):
    node = config
    for part in key.split("."):
        node = node[part]
    return node


def _flat_keys(config, prefix: str = "") -> list[str]:
    out = []
    for key, value in config.items():
        out += _flat_keys(value, f"{prefix}{key}.") if hasattr(value, "items") else [f"{prefix}{key}"]
    return out


def parse_overrides(args: list[str], config) -> dict:
    """`--config.a.b=v` arguments -> {"a.b": typed value} (typed by `config`'s current values)."""
    out = {}
    for arg in args:
        if not arg.startswith("--config.") or "=" not in arg:
            fail("argument", arg, "expected --config.KEY=VALUE", ConfigError)
        key, text = arg[len("--config.") :].split("=", 1)
        if key in ("num_steps", "seed"):
            fail(
                f"--config.{key}",
                text,
                f"is set by the sweep: use --{'steps' if key == 'num_steps' else 'seeds'}",
                ConfigError,
            )
        try:
            current = get_key(config, key)
        except (KeyError, AttributeError):
            close = difflib.get_close_matches(key, _flat_keys(config), n=1)
            fail(
                f"--config.{key}",
                text,
                "not a config key" + (f" (did you mean --config.{close[0]}?)" if close else ""),
                ConfigError,
            )
        out[key] = parse_value(key, text, current)
    return out


def schedule_for(steps: int, evals: int = 10) -> dict:
    """Logging, evaluation, checkpoint and warmup intervals that scale with the run length
    (about `evals` evaluations, 4 checkpoints and 10% warmup per run; `--config.*` overrides win)."""
    log_every = max(1, steps // 40)
    eval_every = max(log_every, steps // evals // log_every * log_every)  # the trainer evaluates at log steps
    return {
        "warmup_steps": max(1, steps // 10),
        "eval_every": eval_every,
        "log_every": log_every,
        "checkpoint_every": max(1, steps // 4),
    }


def base_run_config(module, model: str, overrides: dict, steps: int, evals: int = 10):
    config = module.get_config(model)
    for key, value in schedule_for(steps, evals).items():
        config[key] = value
    config.num_steps = steps
    for key, value in overrides.items():
        set_key(config, key, value)
    return config


def matched_depth(module, setting: Setting, overrides: dict, steps: int) -> tuple[int, float, float]:
    """(num_layers, flops of the result, target flops): the vanilla depth whose training FLOPs per
    sequence is nearest to those of `setting.match_flops_of` (same width, same sequence length)."""
    from phd_jax.flops import train_flops_per_sequence
    from phd_jax.train import model_config

    target_cfg = base_run_config(module, setting.match_flops_of, overrides, steps)
    seq = int(target_cfg.seq_len)
    target = train_flops_per_sequence(model_config(target_cfg), seq)
    base = base_run_config(module, setting.model, overrides, steps)
    best = None
    for layers in range(1, 16 * int(base.model.num_layers) + 1):
        base.model.num_layers = layers
        got = train_flops_per_sequence(model_config(base), seq)
        if best is None or abs(got - target) < abs(best[1] - target):
            best = (layers, got)
        if got > target:
            break
    return best[0], best[1], target


def run_config(module, setting: Setting, seed: int, steps: int, overrides: dict, evals: int = 10):
    total = steps * setting.steps_factor
    config = base_run_config(module, setting.model, overrides, total, evals)
    for key, value in setting.overrides:
        set_key(config, key, value, source="setting")
    if setting.match_flops_of:
        config.model.num_layers = matched_depth(module, setting, overrides, steps)[0]
    config.seed = seed
    return config


def plan(
    settings: list[Setting],
    seeds: list[int],
    steps: int,
    root: str,
    config_path: str = DEFAULT_CONFIG,
    overrides: list[str] | dict = (),
    defaults: dict | None = None,
    evals: int = 10,
    results_root: str | None = None,
) -> list[Run]:
    """Every run of a study: seeds x settings, group by group (`Setting.group`), seed-major within
    a group, each with its config, workdir and (with `results_root`) results directory.
    `defaults` are the study's config values; `overrides` (`--config.*`) win over them."""
    module = load_config_module(config_path)
    if not isinstance(overrides, dict):
        overrides = parse_overrides(list(overrides), module.get_config(None))
    overrides = {**(defaults or {}), **overrides}
    runs = []
    for group in sorted({s.group for s in settings}):
        for seed in seeds:  # seed-major: a study stopped half-way has whole seeds to compare
            for setting in settings:
                if setting.group != group or (setting.seeds is not None and seed not in setting.seeds):
                    continue
                config = run_config(module, setting, seed, steps, overrides, evals)
                where = os.path.join(setting.name, f"seed{seed}")
                results = os.path.join(results_root, where) if results_root else None
                runs.append(Run(setting, seed, config, os.path.join(root, where), results))
    by_name = {s.name: s for s in settings}
    for run in runs:
        if run.setting.continue_from:
            source = source_setting(run.setting, by_name, run.seed)
            src = run_config(module, source, run.seed, steps, overrides, evals)
            run.start_step = continuation_step(run.setting, src)
            run.config.init_from = os.path.join(
                os.path.abspath(root), source.name, f"seed{run.seed}", "checkpoints", str(run.start_step)
            )
            run.config.init_state = "full"
    return runs


# ---- run state ----------------------------------------------------------------------------------


def final_record(workdir: str) -> dict | None:
    """The last record of the run's metrics.jsonl, or None."""
    from phd_jax.train.metrics import read_metrics

    try:
        records = read_metrics(workdir)
    except FileNotFoundError:
        return None
    return records[-1] if records else None


def metrics_complete(workdir: str, num_steps: int) -> bool:
    """metrics.jsonl ends at `num_steps` with a validation loss."""
    last = final_record(workdir)
    return last is not None and last.get("step") == num_steps and last.get("val_loss") is not None


def is_saved_result(path: str, num_steps: int) -> bool:
    """A results directory (no checkpoints/) whose metrics are complete (see `save_results`)."""
    return not paths.exists(os.path.join(path, "checkpoints")) and metrics_complete(path, num_steps)


def is_finished(workdir: str, num_steps: int) -> bool:
    """Trained to `num_steps`: metrics.jsonl ends there with a validation loss, and its checkpoint
    is complete (orbax renames the temporary directory only once everything is written)."""
    done = os.path.join(workdir, "checkpoints", str(num_steps))
    if paths.is_remote(workdir):  # no rename on gs://: orbax marks a complete step with commit_success.txt
        return metrics_complete(workdir, num_steps) and paths.isfile(os.path.join(done, "commit_success.txt"))
    return metrics_complete(workdir, num_steps) and os.path.isdir(done)


def run_state(run: Run) -> str:
    """'saved' (its results are in its results directory), 'finished', 'partial' (has a
    config.json: will resume) or 'new'. Raises ConfigError when the workdir or the results
    directory holds a run of another config (including another num_steps)."""
    from phd_jax.train.checkpoint import check_workdir

    if run.results_dir and os.path.isfile(os.path.join(run.results_dir, "config.json")):
        check_workdir(run.results_dir, run.config)  # raises on a different model/data/optimiser
        with open(os.path.join(run.results_dir, "config.json")) as f:
            saved = json.load(f).get("num_steps")
        if saved == run.config.num_steps and is_saved_result(run.results_dir, int(run.config.num_steps)):
            return "saved"
    if not check_workdir(run.workdir, run.config):  # raises on a different model/data/optimiser
        return "new"
    saved = json.loads(paths.read_text(os.path.join(run.workdir, "config.json"))).get("num_steps")
    if saved != run.config.num_steps:
        raise ConfigError(
            f"workdir={run.workdir!r} holds {run.label} trained with num_steps={saved}, but "
            f"this sweep asks for num_steps={run.config.num_steps}: use another --root "
            f"(one root per --steps)"
        )
    return "finished" if is_finished(run.workdir, int(run.config.num_steps)) else "partial"


RESULT_FILES = ("metrics.jsonl", "config.json", "model_config.json", "version.json", "kprime.json")


def save_results(run: Run) -> str | None:
    """Copy the finished run's `RESULT_FILES` (those present) to its results directory, whole or
    not at all (written next to it, then renamed). Returns the directory, or None without one.
    A gs:// workdir's metrics segments become one local metrics.jsonl (`read_metrics`' records)."""
    import shutil

    if not run.results_dir:
        return None
    dest = os.path.abspath(run.results_dir)
    tmp = dest + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for name in RESULT_FILES:
        src = os.path.join(run.workdir, name)
        if name == "metrics.jsonl" and paths.is_remote(run.workdir):
            from phd_jax.train.metrics import read_metrics

            with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in read_metrics(run.workdir))
        elif paths.is_remote(src) and paths.isfile(src):
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(paths.read_bytes(src))
        elif os.path.isfile(src):
            shutil.copy2(src, os.path.join(tmp, name))
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


def steps_done(workdir: str) -> int:
    last = final_record(workdir)
    return 0 if last is None else int(last["step"])


# ---- time estimate ------------------------------------------------------------------------------


def estimate_seconds(run: Run, calibration: dict) -> float:
    """Seconds to train `run` from scratch: a fixed start-up/compile cost plus the analytic
    training FLOPs (steps and evaluations) at the calibrated FLOP/s (experiments/timing.py)."""
    from phd_jax.flops import train_flops_per_sequence
    from phd_jax.train import model_config

    c = run.config
    cfg = model_config(c)
    per_seq = train_flops_per_sequence(cfg, int(c.seq_len))
    steps = int(c.num_steps) - run.start_step
    evals = math.ceil(steps / int(c.eval_every))
    flops = steps * int(c.batch_size) * per_seq + evals * int(c.eval_batches) * int(c.batch_size) * per_seq / 3
    rate = calibration["flops_per_s"] * (calibration.get("naive_efficiency", 1.0) if cfg.variant == "naive" else 1.0)
    return calibration["overhead_s"] + flops / rate


def format_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


# ---- running ------------------------------------------------------------------------------------


def execute(runs: list[Run], calibration: dict, dry_run: bool = False, progress: bool | None = None, log=print) -> dict:
    """Train every run not finished yet, in order (resuming partial ones). Returns
    {"finished": [...], "trained": [...], "failed": [(label, message)], "skipped": [...]}
    (and "preempted": True when SIGTERM stopped a run)."""
    import jax

    from phd_jax.train import validate

    states = {}
    for run in runs:  # every check before any training
        validate(run.config, jax.device_count())
        states[run.workdir] = run_state(run)
    for run in runs:  # finished before results were kept: keep them now
        if states[run.workdir] == "finished" and run.results_dir and not dry_run:
            save_results(run)
    done = ("finished", "saved")
    sources = sources_to_retrain(runs, states, log)
    todo = [r for r in runs if states[r.workdir] not in done or r.workdir in sources]
    remaining = sum(estimate_seconds(r, calibration) * (1 - _fraction_done(r)) for r in todo)
    total = sum(estimate_seconds(r, calibration) for r in runs)
    width = max(len(r.label) for r in runs)
    log(
        f"{len(runs)} run{'s' if len(runs) != 1 else ''} ({len(runs) - len(todo)} finished), "
        f"estimated {format_seconds(total)} in all, "
        f"{format_seconds(remaining)} left ({calibration['description']})"
    )
    for run in runs:
        c = run.config
        log(
            f"  {run.label:<{width}}  {states[run.workdir]:<8}  {c.model.num_layers} layers, "
            f"{c.num_steps} steps x {c.batch_size} x {c.seq_len} tokens"
            f"{f' from {run.setting.continue_from} step {run.start_step}' if run.start_step else ''}  "
            f"~{format_seconds(estimate_seconds(run, calibration))}"
            f"  {run.results_dir if states[run.workdir] == 'saved' else run.workdir}"
        )
    result = {
        "finished": [r.label for r in runs if states[r.workdir] in done],
        "trained": [],
        "failed": [],
        "skipped": [r.label for r in runs if states[r.workdir] in done],
    }
    if dry_run:
        return result
    from phd_jax.train import TrainingError, train_and_evaluate

    for i, run in enumerate(todo, 1):
        state = "retrain: a continuation needs its checkpoint" if run.workdir in sources else states[run.workdir]
        log(f"\n=== [{i}/{len(todo)}] {run.label} ({state}) -> {run.workdir}")
        t0 = time.perf_counter()
        missing = missing_source(run)
        if missing:
            log(f"FAILED {run.label}: {missing}")
            result["failed"].append((run.label, missing))
            continue
        try:
            out = train_and_evaluate(run.config, run.workdir, progress=progress)
        except TrainingError as e:
            log(f"FAILED {run.label}: {e}")
            result["failed"].append((run.label, str(e)))
            continue
        if out.get("preempted"):
            log("stopped by SIGTERM: rerun the same command to resume")
            result["preempted"] = True
            break
        log(f"=== {run.label}: val_loss {out.get('val_loss', float('nan')):.4f} in {time.perf_counter() - t0:.0f} s")
        if run.workdir in sources:  # retrained for its checkpoint: its saved results stay as they are
            continue
        saved = save_results(run)
        if saved:
            log(f"    results -> {saved}")
        result["trained"].append(run.label)
        result["finished"].append(run.label)
    return result


def _fraction_done(run: Run) -> float:
    total = int(run.config.num_steps) - run.start_step
    return max(0, steps_done(run.workdir) - run.start_step) / total if total > 0 else 1.0
