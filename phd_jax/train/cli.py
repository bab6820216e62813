"""Train a PHD model, then sample from it (`python train.py` takes the same flags).

USAGE: phd-train [--config=configs/default.py[:NAME]] [--config.key=value ...] [--workdir=DIR]

The default trains a small byte-level PHD-CSWA-2-16-32 on Shakespeare in a few minutes on a
CPU, then prints a sample. `--config=configs/NAME.py` names a config shipped in `phd_jax/configs`
unless such a file exists where you stand. Rerunning with the same --workdir resumes from its
latest checkpoint. Several hosts: pass --coordinator_address/--num_processes/--process_id (or
set the usual environment, e.g. on Cloud TPU / SLURM) and run the same command on each.
Every error is one line on stderr and exit status 2 (--debug or PHD_JAX_DEBUG=1: the traceback).
The logic lives in `phd_jax.train`.

The program: `define_flags()` (before parsing), `parse_flags(argv)` (absl's `flags_parser`),
`main(argv)`. Importing this module defines nothing and runs nothing.
"""

from __future__ import annotations

import os
import sys

from absl import flags, logging
from ml_collections import config_flags

from phd_jax import configs

FLAGS = flags.FLAGS
DEFAULT_WORKDIR = "runs/default"
_defined = []  # once define_flags() ran


def fail(message) -> None:
    """One line on stderr, exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _debug() -> bool:
    """--debug (phd_jax.cli defines it) or PHD_JAX_DEBUG=1: errors raise with their traceback."""
    if os.environ.get("PHD_JAX_DEBUG", "").strip().lower() in ("1", "true", "yes"):
        return True
    return "debug" in FLAGS and FLAGS.is_parsed() and bool(FLAGS.debug)


def _flag_error(e: BaseException):
    from phd_jax.train.launch import flag_error_message

    if _debug():
        raise e
    seen, todo = set(), [e]
    while todo:  # a config file that is not Python (or not UTF-8): name it and the line
        cause = todo.pop()
        if cause is None or id(cause) in seen:
            continue
        seen.add(id(cause))
        if isinstance(cause, SyntaxError) and cause.filename and os.path.isfile(cause.filename):
            fail(f"--config={cause.filename}: cannot load the config file: {cause.msg} (line {cause.lineno})")
        todo += [cause.__cause__, cause.__context__, *(a for a in cause.args if isinstance(a, BaseException))]
    fail(flag_error_message(e))


def define_flags():
    """Define the program's flags (once). ml_collections loads the default config and applies
    the command line's `--config.*` overrides while defining `--config`: an error there is one
    line and exit status 2."""
    if _defined:
        return
    _defined.append(True)
    try:
        config_flags.DEFINE_config_file(
            "config",
            configs.resolve(configs.DEFAULT),
            "Training config, FILE[:MODEL_NAME] (configs/NAME.py: a config shipped with phd_jax).",
        )
    except Exception as e:  # an unknown key in an override, a config file that fails to load
        _flag_error(e)
    FLAGS["config"].default_as_str = repr(configs.DEFAULT)  # --help: the spelling that names it
    flags.DEFINE_string("workdir", DEFAULT_WORKDIR, "Checkpoints, metrics and configs go here.")
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host).")
    flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
    flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
    flags.DEFINE_bool("progress", None, "Progress bar (default: only on a terminal).")


def parse_flags(argv):
    """absl's flags_parser: `configs/NAME.py` resolved; a bad flag or override is one line, not a traceback."""
    try:
        return FLAGS(configs.resolve_argv(argv))
    except Exception as e:  # flags.Error (e.g. --config.model.d_model=x), an unknown override key
        _flag_error(e)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # keep orbax's INFO lines out of the way
    from phd_jax.errors import ConfigError
    from phd_jax.train import RestoreError, TrainingError, train_and_evaluate
    from phd_jax.train.launch import initialize_distributed, sample_after_training

    filename = config_flags.get_config_filename(FLAGS["config"]).partition(":")[0]  # FILE[:NAME]
    if not os.path.exists(filename):
        fail(
            f"--config={filename!r} is invalid: no such file; pass --config=FILE or a shipped config, "
            f"configs/{{{','.join(configs.names())}}}.py"
        )
    try:
        config = FLAGS.config
        config["model"]  # a config file that failed to load raises only when used
    except Exception as e:  # the config file failed to load (ml_collections reports it lazily)
        _flag_error(e)
    workdir = FLAGS.workdir
    try:
        initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
        metrics = train_and_evaluate(config, workdir, progress=FLAGS.progress)
        if not metrics.get("preempted"):
            sample_after_training(config, workdir)
    except (ConfigError, TrainingError, RestoreError) as e:
        if _debug():
            raise
        fail(e)
