"""Training: the trainer, run configs, optimizer, sharding, checkpoints and metrics.

Public:
    train_and_evaluate(config, workdir) -> final metrics      (the loop; train.py calls it)
    TrainState(step, params, opt_state, nonfinite)            (the trainer's state, a pytree)
    train_step, eval_step                                     (pure functions)
    cross_entropy, loss_terms, perplexity                     (phd_jax.train.loss: also evaluation's)
    base_config(), validate(config, num_devices, tokenizer), model_config(config, tokenizer=None)
    load_run_config(workdir), restore_params(path, step=None) -> (ModelConfig, params, step)
    make_optimizer(config), make_mesh(config), MetricWriter
    RestoreError                                              (no checkpoint restores: phd_jax.train.restore)
"""

from phd_jax.errors import ConfigError
from phd_jax.train.checkpoint import restore_params
from phd_jax.train.config import base_config, load_run_config, model_config, validate
from phd_jax.train.loss import cross_entropy, loss_terms, perplexity
from phd_jax.train.metrics import MetricWriter
from phd_jax.train.optimizer import make_optimizer
from phd_jax.train.restore import RestoreError
from phd_jax.train.sharding import make_mesh
from phd_jax.train.state import TrainState
from phd_jax.train.trainer import TrainingError, eval_step, train_and_evaluate, train_step

__all__ = [
    "ConfigError",
    "MetricWriter",
    "RestoreError",
    "TrainState",
    "TrainingError",
    "base_config",
    "cross_entropy",
    "eval_step",
    "load_run_config",
    "loss_terms",
    "make_mesh",
    "make_optimizer",
    "model_config",
    "perplexity",
    "restore_params",
    "train_and_evaluate",
    "train_step",
    "validate",
]
