"""A small, real training loop: data-parallel `jax.jit` with `NamedSharding` over a mesh.

Importable from Colab: `train_and_evaluate(configs.default.get_config(), "/tmp/run")`.
`train.py` is the command-line wrapper. Writes `metrics.jsonl` (one JSON object
per logged step) and the final parameters (orbax) under the work directory.
"""
from __future__ import annotations

import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from phd_jax import data as data_lib
from phd_jax.config import ModelConfig
from phd_jax.model import forward, init_params, num_params


def model_config(config) -> ModelConfig:
    """The `model` section of an ml_collections config as a validated ModelConfig."""
    return ModelConfig(**config.model.to_dict())


def cross_entropy(params, cfg: ModelConfig, batch):
    """Mean next-token cross-entropy (nats) of `batch [B, T+1]`."""
    logits = forward(params, cfg, batch[:, :-1])
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, batch[:, 1:, None], axis=-1))


def make_optimizer(config):
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, config.warmup_steps, max(config.num_steps, config.warmup_steps + 1))
    return optax.chain(optax.clip_by_global_norm(config.grad_clip),
                       optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=config.weight_decay))


def _check(config, num_devices):
    for field in ("batch_size", "seq_len", "num_steps", "log_every", "eval_every", "eval_batches"):
        if int(config[field]) < 1:
            raise ValueError(f"config.{field}={config[field]} is invalid: must be >= 1")
    if config.batch_size % num_devices:
        raise ValueError(f"config.batch_size={config.batch_size} must be a multiple of the "
                         f"{num_devices} devices (data parallelism)")
    if config.seq_len > config.model.max_seq_len:
        raise ValueError(f"config.seq_len={config.seq_len} exceeds config.model.max_seq_len="
                         f"{config.model.max_seq_len}")


def train_and_evaluate(config, workdir: str, progress: bool = True) -> dict:
    """Train `config.num_steps` steps; return the final metrics."""
    cfg = model_config(config)
    devices = jax.devices()
    _check(config, len(devices))
    os.makedirs(workdir, exist_ok=True)
    mesh = Mesh(np.array(devices), ("data",))
    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

    train_data, val_data = data_lib.split(data_lib.shakespeare_bytes(), config.val_fraction)
    optimizer = make_optimizer(config)
    params = jax.device_put(init_params(cfg, config.seed), replicated)
    opt_state = jax.device_put(optimizer.init(params), replicated)

    @jax.jit
    def train_step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(cross_entropy)(params, cfg, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, {
            "loss": loss, "grad_norm": optax.global_norm(grads)}

    eval_loss = jax.jit(lambda p, b: cross_entropy(p, cfg, b))

    def evaluate(params):
        losses = [eval_loss(params, jax.device_put(
            data_lib.batch_at(val_data, i, config.batch_size, config.seq_len, seed=10_000), sharded))
            for i in range(config.eval_batches)]
        return float(np.mean([float(x) for x in losses]))

    print(f"model {cfg.name}: {num_params(params):,} parameters, {cfg.num_layers} layers, "
          f"d_model {cfg.d_model}; {len(devices)} {devices[0].platform} device(s); "
          f"{len(train_data):,} training bytes", flush=True)
    log = open(os.path.join(workdir, "metrics.jsonl"), "a")
    metrics, t0, seen = {}, time.perf_counter(), 0
    bar = tqdm(range(1, config.num_steps + 1), disable=not progress, desc="train", unit="step")
    for step in bar:
        batch = data_lib.batch_at(train_data, step, config.batch_size, config.seq_len, config.seed)
        params, opt_state, out = train_step(params, opt_state, jax.device_put(batch, sharded))
        seen += batch.shape[0] * config.seq_len
        if step % config.log_every == 0 or step == config.num_steps:
            out = jax.device_get(out)   # waits for the steps dispatched so far (dispatch is async)
            metrics = {"step": step, "loss": float(out["loss"]), "grad_norm": float(out["grad_norm"]),
                       "tokens_per_s": seen / (time.perf_counter() - t0)}
            if step % config.eval_every == 0 or step == config.num_steps:
                metrics["val_loss"] = evaluate(params)
                metrics["val_bits_per_byte"] = metrics["val_loss"] / math.log(2)
            log.write(json.dumps(metrics) + "\n")
            log.flush()
            bar.set_postfix(loss=f"{metrics['loss']:.3f}")
            tqdm.write(" | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                  for k, v in metrics.items()))
            t0, seen = time.perf_counter(), 0
    log.close()
    save_params(params, os.path.join(workdir, "params"))
    return metrics


def save_params(params, path: str):
    """Write parameters with orbax (atomically: a crash never leaves a half-written checkpoint)."""
    import orbax.checkpoint as ocp
    path = os.path.abspath(path)
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(path, params, force=True)


def load_params(path: str, cfg: ModelConfig):
    """Read parameters saved by `save_params`, checked against the shapes `cfg` expects."""
    import orbax.checkpoint as ocp
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no checkpoint at {path} (train first: python train.py --workdir=...)")
    target = jax.eval_shape(lambda: init_params(cfg, 0))
    try:
        with ocp.StandardCheckpointer() as ckpt:
            return ckpt.restore(path, target)
    except Exception as e:  # orbax raises many types for truncated or mismatched files
        raise ValueError(f"checkpoint at {path} is unreadable or does not match model {cfg.name} "
                         f"({type(e).__name__}: {str(e)[:200]})") from e
