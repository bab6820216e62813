"""Command-line programs: `phd-train` and `phd-eval` (console scripts), and `train.py` / `eval.py`.

    phd-train [--config=configs/default.py] [--config.key=value ...] [--workdir=DIR]
    phd-eval  --workdir=DIR [--config=...] [--batches=N]

Each program is an absl `main(argv)` plus its flags. When the training / evaluation
subpackages ship their own programs (`phd_jax.train.cli`, `phd_jax.evaluation.cli`: a
module that defines its flags at import and has `main(argv)`), those are run; otherwise
the built-in programs below (train on the embedded corpus and sample; held-out loss and a
sample). A relative `--config` path that does not exist in the working directory is looked
up in the checkout the package was installed from (editable installs, Colab clones).
"""
from __future__ import annotations

import importlib
import math
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = "configs/default.py"

_TRAIN_USAGE = """Train a PHD model on the embedded corpus, then sample from it.

USAGE: phd-train [--config=configs/default.py] [--config.key=value ...] [--workdir=DIR]
"""
_EVAL_USAGE = """Evaluate parameters saved by phd-train: held-out loss and a sample.

USAGE: phd-eval --workdir=DIR [--config=configs/default.py] [--config.key=value ...]
"""


def config_path(path: str) -> str:
    """`path` if it exists, else the same relative path inside the checkout (if there is one)."""
    if os.path.exists(path.split(":")[0]) or os.path.isabs(path):
        return path
    in_repo = os.path.join(_REPO_ROOT, path)
    return in_repo if os.path.exists(in_repo.split(":")[0]) else path


def _loaded_config(holder):
    """The parsed config, or a clear error when the file is missing or broken."""
    from phd_jax.checks import fail

    value = holder.value
    if type(value).__name__ == "_ErrorConfig":   # config_flags defers file errors to first use
        fail(f"--{holder.name}", config_flags.get_config_filename(flags.FLAGS[holder.name]),
             f"cannot read it ({value._error}); pass --{holder.name}=PATH "
             "to a config file, e.g. configs/default.py of a phd-jax checkout", error=app.UsageError)
    return value


def _program(module_name: str):
    """The subpackage's program module, or None when that subpackage has none (yet)."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and module_name.startswith(e.name):
            return None
        raise


def _as_key_flags(*holders):
    # absl's --help lists the flags of the module named sys.argv[0]; console scripts define none.
    for h in holders:
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[h.name])


def _run(main, usage: str, argv=None):
    main_module = sys.modules.get("__main__")
    if main_module is not None and not main_module.__doc__:
        main_module.__doc__ = usage
    argv = sys.argv if argv is None else argv
    try:
        app.run(main, argv=argv)
    except SystemExit as e:   # absl exits 1 after printing --help; asking for help is no failure
        if e.code == 1 and any(a in ("--help", "-?", "--helpshort", "--helpfull") for a in argv[1:]):
            raise SystemExit(0) from None
        raise


def train_main(argv=None):
    """Entry point of `phd-train` (and `train.py`)."""
    program = _program("phd_jax.train.cli")
    if program is not None:
        return _run(program.main, program.__doc__ or _TRAIN_USAGE, argv)
    config = config_flags.DEFINE_config_file("config", config_path(DEFAULT_CONFIG), "Training config file.")
    workdir = flags.DEFINE_string("workdir", "runs/default", "Where metrics and parameters go.")
    _as_key_flags(config, workdir)

    def main(argv):
        del argv
        logging.set_verbosity(logging.WARNING)   # keep orbax's INFO lines out of the way
        import jax

        from phd_jax import data, generate
        from phd_jax.training import load_params, model_config, train_and_evaluate

        c = _loaded_config(config)
        train_and_evaluate(c, workdir.value)
        cfg = model_config(c)
        params = load_params(os.path.join(workdir.value, "params"), cfg)
        prompt = data.encode(c.sample_prompt)[None]
        out = generate(params, cfg, prompt, c.sample_tokens, rng=jax.random.key(c.seed), temperature=0.8,
                       top_k=40, max_len=min(cfg.max_seq_len, prompt.shape[1] + c.sample_tokens))
        print(f"\n--- sample from {cfg.name} ---\n{c.sample_prompt}{data.decode(out[0])}")

    _run(main, _TRAIN_USAGE, argv)


def eval_main(argv=None):
    """Entry point of `phd-eval` (and `eval.py`)."""
    program = _program("phd_jax.evaluation.cli")
    if program is not None:
        return _run(program.main, program.__doc__ or _EVAL_USAGE, argv)
    config = config_flags.DEFINE_config_file("config", config_path(DEFAULT_CONFIG), "The training config.")
    workdir = flags.DEFINE_string("workdir", "runs/default", "Directory with params/ from phd-train.")
    batches = flags.DEFINE_integer("batches", 32, "Held-out batches to average.")
    _as_key_flags(config, workdir, batches)

    def main(argv):
        del argv
        logging.set_verbosity(logging.WARNING)
        import jax
        import numpy as np

        from phd_jax import data, generate
        from phd_jax.training import cross_entropy, load_params, model_config

        c = _loaded_config(config)
        cfg = model_config(c)
        params = load_params(os.path.join(workdir.value, "params"), cfg)
        _, val = data.split(data.shakespeare_bytes(), c.val_fraction)
        loss_fn = jax.jit(lambda p, b: cross_entropy(p, cfg, b))
        losses = [float(loss_fn(params, data.batch_at(val, i, c.batch_size, c.seq_len, 10_000)))
                  for i in range(batches.value)]
        loss = float(np.mean(losses))
        print(f"{cfg.name}: held-out loss {loss:.4f} nats/byte = {loss / math.log(2):.4f} bits/byte "
              f"({batches.value} batches of {c.batch_size}x{c.seq_len})")
        prompt = data.encode(c.sample_prompt)[None]
        out = generate(params, cfg, prompt, c.sample_tokens,
                       max_len=min(cfg.max_seq_len, prompt.shape[1] + c.sample_tokens))
        print(f"greedy sample:\n{c.sample_prompt}{data.decode(out[0])}")

    _run(main, _EVAL_USAGE, argv)
