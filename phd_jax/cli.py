"""Command-line programs: `phd-train` and `phd-eval` (console scripts of the installed package).

    phd-train [--config=configs/default.py[:NAME]] [--config.key=value ...] [--workdir=DIR]
    phd-eval  --workdir=DIR [--step=N]

A program is an absl `main(argv)` plus its flags. When the training / evaluation
subpackages ship their program as a module (`phd_jax.train.cli`, `phd_jax.evaluation.cli`:
flags defined at import, `main(argv)`, optionally `parse_flags(argv)` for absl's
`flags_parser`), that module runs; otherwise the built-in programs below, which do what
`train.py` / `eval.py` do. A relative `--config` path that does not exist in the working
directory is looked up in the checkout the package was installed from (editable installs,
Colab clones); a wheel installed elsewhere needs an explicit `--config=FILE`.
"""
from __future__ import annotations

import importlib
import math
import os
import sys

from absl import app, flags, logging

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = "configs/default.py"
_HELP_FLAGS = ("--help", "-?", "--helpshort", "--helpfull")

_TRAIN_USAGE = """Train a PHD model (resumes from the workdir's latest checkpoint), then sample from it.

USAGE: phd-train [--config=configs/default.py[:NAME]] [--config.key=value ...] [--workdir=DIR]
"""
_EVAL_USAGE = """Evaluate a training run: held-out loss and a sample, from the workdir alone.

USAGE: phd-eval --workdir=DIR [--step=N]
"""


def config_path(path: str) -> str:
    """`path` (FILE or FILE:ARG) if FILE exists or is absolute, else the same relative path in
    the checkout this package lives in, if there is one there."""
    file, sep, arg = path.partition(":")
    if os.path.isabs(file) or os.path.exists(file):
        return path
    in_repo = os.path.join(_REPO_ROOT, file)
    return in_repo + sep + arg if os.path.exists(in_repo) else path


def _program(module_name: str):
    """The subpackage's program module, or None when that subpackage has none."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and module_name.startswith(e.name):
            return None
        raise


def _run(main, usage: str, argv=None, flags_parser=None):
    """`app.run(main)` with a usage text for console scripts (whose `__main__` has no docstring)
    and exit status 0 for --help (absl exits 1)."""
    argv = list(sys.argv if argv is None else argv)
    main_module = sys.modules.get("__main__")
    if main_module is not None and not main_module.__doc__:
        main_module.__doc__ = usage
    # absl's --help lists the flags of the module named argv[0]; the console script defines none.
    for name, module_flags in flags.FLAGS.flags_by_module_dict().items():
        if name != argv[0] and name.startswith("phd_jax"):
            for flag in module_flags:
                flags.FLAGS.register_key_flag_for_module(argv[0], flag)
    kwargs = {"flags_parser": flags_parser} if flags_parser is not None else {}
    try:
        app.run(main, argv=argv, **kwargs)
    except SystemExit as e:
        if e.code == 1 and any(a in _HELP_FLAGS for a in argv[1:]):
            raise SystemExit(0) from None
        raise


def _fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def train_main(argv=None):
    """Entry point of `phd-train`."""
    program = _program("phd_jax.train.cli")
    if program is not None:
        return _run(program.main, program.__doc__ or _TRAIN_USAGE, argv, getattr(program, "parse_flags", None))

    # Built-in program (what train.py does), until phd_jax.train.cli exists.
    from ml_collections import config_flags

    from phd_jax.train.launch import flag_error_message
    try:  # ml_collections parses --config and its overrides while defining the flag
        config = config_flags.DEFINE_config_file("config", config_path(DEFAULT_CONFIG),
                                                 "Training config (FILE[:MODEL_NAME]).")
    except Exception as e:
        _fail(flag_error_message(e))
    workdir = flags.DEFINE_string("workdir", "runs/default", "Checkpoints, metrics and configs go here.")
    coordinator = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host).")
    num_processes = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
    process_id = flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
    progress = flags.DEFINE_bool("progress", None, "Progress bar (default: only on a terminal).")

    def parse_flags(args):
        try:
            return flags.FLAGS(args)
        except flags.Error as e:   # e.g. --config.model.d_model=x, or a config file that fails
            cause = e.__cause__ or e.__context__
            _fail(flag_error_message(cause if cause is not None and not isinstance(cause, flags.Error) else e))
        except Exception as e:     # an unknown key in an override
            _fail(flag_error_message(e))

    def main(argv):
        del argv
        logging.set_verbosity(logging.WARNING)   # keep orbax's INFO lines out of the way
        from phd_jax.checks import ConfigError
        from phd_jax.train import TrainingError
        from phd_jax.train.launch import initialize_distributed, sample_after_training

        if type(config.value).__name__ == "_ErrorConfig":   # config_flags defers a missing file to first use
            _fail(f"--config={config_flags.get_config_filename(flags.FLAGS['config'])!r} is invalid: "
                  f"no such file; pass --config=FILE (e.g. configs/default.py of a phd-jax checkout)")
        try:
            initialize_distributed(coordinator.value, num_processes.value, process_id.value)
            from phd_jax.train import train_and_evaluate
            metrics = train_and_evaluate(config.value, workdir.value, progress=progress.value)
            if not metrics.get("preempted"):
                sample_after_training(config.value, workdir.value)
        except (ConfigError, TrainingError) as e:
            _fail(str(e))

    _run(main, _TRAIN_USAGE, argv, parse_flags)


def eval_main(argv=None):
    """Entry point of `phd-eval`."""
    program = _program("phd_jax.evaluation.cli")
    if program is not None:
        return _run(program.main, program.__doc__ or _EVAL_USAGE, argv, getattr(program, "parse_flags", None))

    # Built-in program (what eval.py does), until phd_jax.evaluation.cli exists.
    workdir = flags.DEFINE_string("workdir", "runs/default", "A training workdir (or one of its checkpoints/<step>).")
    step = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")

    def main(argv):
        del argv
        logging.set_verbosity(logging.WARNING)
        import jax
        import numpy as np

        from phd_jax import generate
        from phd_jax.checks import ConfigError
        from phd_jax.data import make_pipeline
        from phd_jax.train import cross_entropy, load_run_config, restore_params

        try:
            cfg, params, at = restore_params(workdir.value, step.value)
            config = load_run_config(workdir.value.split("/checkpoints/")[0])
        except ConfigError as e:
            _fail(str(e))
        pipe = make_pipeline(config)
        loss_fn = jax.jit(lambda p, b: cross_entropy(p, cfg, b))
        batches = pipe.eval_batches()
        loss = float(np.mean([float(loss_fn(params, b)) for b in batches]))
        print(f"{cfg.name} (step {at}): held-out loss {loss:.4f} nats/token = {loss / math.log(2):.4f} "
              f"bits/token ({len(batches)} batches of {config.batch_size}x{config.seq_len})")
        if config.sample_tokens:
            prompt = np.asarray(pipe.tokenizer.encode(config.sample_prompt), np.int32)[None]
            out = generate(params, cfg, prompt, config.sample_tokens,
                           max_len=prompt.shape[1] + config.sample_tokens)
            print(f"greedy sample:\n{config.sample_prompt}{pipe.tokenizer.decode(out[0])}")

    _run(main, _EVAL_USAGE, argv)
