"""Evaluate parameters saved by train.py: held-out loss and a sample.

    python eval.py --workdir=runs/default [--config.key=value ...]
"""
import math

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "The training config.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Directory with params/ from train.py.")
_BATCHES = flags.DEFINE_integer("batches", 32, "Held-out batches to average.")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)   # keep orbax's INFO lines out of the way
    import jax
    import numpy as np

    from phd_jax import data, generate
    from phd_jax.training import cross_entropy, load_params, model_config

    config = _CONFIG.value
    cfg = model_config(config)
    params = load_params(f"{_WORKDIR.value}/params", cfg)
    _, val = data.split(data.shakespeare_bytes(), config.val_fraction)
    loss_fn = jax.jit(lambda p, b: cross_entropy(p, cfg, b))
    losses = [float(loss_fn(params, data.batch_at(val, i, config.batch_size, config.seq_len, 10_000)))
              for i in range(_BATCHES.value)]
    loss = float(np.mean(losses))
    print(f"{cfg.name}: held-out loss {loss:.4f} nats/byte = {loss / math.log(2):.4f} bits/byte "
          f"({_BATCHES.value} batches of {config.batch_size}x{config.seq_len})")
    prompt = data.encode(config.sample_prompt)[None]
    out = generate(params, cfg, prompt, config.sample_tokens, max_len=min(
        cfg.max_seq_len, prompt.shape[1] + config.sample_tokens))
    print(f"greedy sample:\n{config.sample_prompt}{data.decode(out[0])}")


if __name__ == "__main__":
    app.run(main)
