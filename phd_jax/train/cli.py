"""Train a PHD model, then sample from it (`python train.py` takes the same flags).

USAGE: phd-train [--config=configs/default.py[:NAME]] [--config.key=value ...] [--workdir=DIR]

The default trains a small byte-level PHD-CSWA-2-16-32 on Shakespeare in a few minutes on a
CPU, then prints a sample. Rerunning with the same --workdir resumes from its latest
checkpoint. Several hosts: pass --coordinator_address/--num_processes/--process_id (or set
the usual environment, e.g. on Cloud TPU / SLURM) and run the same command on each.
Every error is one line on stderr and exit status 2. The logic lives in `phd_jax.train`.
"""

import os
import sys

from absl import flags, logging
from ml_collections import config_flags

from phd_jax.cli import DEFAULT_CONFIG, config_path


def _fail_on_flags(e: BaseException):
    """ml_collections parses --config (and its overrides) while defining the flag: one line, exit 2."""
    from phd_jax.train.launch import flag_error_message

    print(f"error: {flag_error_message(e)}", file=sys.stderr)
    sys.exit(2)


try:
    _CONFIG = config_flags.DEFINE_config_file(
        "config", config_path(DEFAULT_CONFIG), "Training config (FILE[:MODEL_NAME])."
    )
except Exception as e:  # an unknown key in an override, a config file that fails to load
    _fail_on_flags(e)
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Checkpoints, metrics and configs go here.")
_COORD = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host).")
_NPROC = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
_PID = flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
_PROGRESS = flags.DEFINE_bool("progress", None, "Progress bar (default: only on a terminal).")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # keep orbax's INFO lines out of the way
    from phd_jax.errors import ConfigError
    from phd_jax.train import TrainingError
    from phd_jax.train.launch import initialize_distributed, sample_after_training

    filename = config_flags.get_config_filename(flags.FLAGS["config"]).partition(":")[0]  # FILE[:NAME]
    if not os.path.exists(filename):
        print(
            f"error: --config={filename!r} is invalid: no such file; pass --config=FILE "
            f"(e.g. configs/default.py of a phd-jax checkout)",
            file=sys.stderr,
        )
        sys.exit(2)
    try:
        config = _CONFIG.value
        config["model"]  # a config file that failed to load raises only when used
    except Exception as e:  # the config file failed to load (ml_collections reports it lazily)
        _fail_on_flags(e)
    try:
        initialize_distributed(_COORD.value, _NPROC.value, _PID.value)
        from phd_jax.train import train_and_evaluate

        metrics = train_and_evaluate(config, _WORKDIR.value, progress=_PROGRESS.value)
        if not metrics.get("preempted"):
            sample_after_training(config, _WORKDIR.value)
    except (ConfigError, TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def parse_flags(argv):
    """absl's flags_parser: a bad flag or override is one line, not a traceback."""
    try:
        return flags.FLAGS(argv)
    except Exception as e:  # flags.Error (e.g. --config.model.d_model=x), an unknown override key
        _fail_on_flags(e)
