"""Train a PHD model.  python train.py [--config=configs/default.py] [--config.key=value ...] [--workdir=DIR]

The default trains a small byte-level PHD-CSWA-2-16-32 on Shakespeare in a few minutes
on a CPU, then prints a sample. The logic lives in `phd_jax.training`.
"""
from absl import app, flags, logging
from ml_collections import config_flags

from phd_jax.training import load_params, model_config, train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Training config.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Where metrics and parameters go.")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)   # keep orbax's INFO lines out of the way
    import jax

    from phd_jax import data, generate

    config = _CONFIG.value
    train_and_evaluate(config, _WORKDIR.value)
    cfg = model_config(config)
    params = load_params(f"{_WORKDIR.value}/params", cfg)
    prompt = data.encode(config.sample_prompt)[None]
    out = generate(params, cfg, prompt, config.sample_tokens, rng=jax.random.key(config.seed),
                   temperature=0.8, top_k=40, max_len=min(cfg.max_seq_len, prompt.shape[1] + config.sample_tokens))
    print(f"\n--- sample from {cfg.name} ---\n{config.sample_prompt}{data.decode(out[0])}")


if __name__ == "__main__":
    app.run(main)
