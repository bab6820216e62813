"""Evaluate a training run: held-out loss and a sample, from the workdir alone.

    python eval.py --workdir=runs/default [--step=N]
"""
import math

from absl import app, flags, logging

_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "A train.py workdir (or one of its checkpoints/<step>).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)   # keep orbax's INFO lines out of the way
    import jax
    import numpy as np

    from phd_jax import generate
    from phd_jax.data import make_pipeline
    from phd_jax.train import cross_entropy, load_run_config, restore_params

    cfg, params, step = restore_params(_WORKDIR.value, _STEP.value)
    config = load_run_config(_WORKDIR.value.split("/checkpoints/")[0])
    pipe = make_pipeline(config)
    loss_fn = jax.jit(lambda p, b: cross_entropy(p, cfg, b))
    batches = pipe.eval_batches()
    loss = float(np.mean([float(loss_fn(params, b)) for b in batches]))
    print(f"{cfg.name} (step {step}): held-out loss {loss:.4f} nats/token = {loss / math.log(2):.4f} bits/token "
          f"({len(batches)} batches of {config.batch_size}x{config.seq_len})")
    prompt = np.asarray(pipe.tokenizer.encode(config.sample_prompt), np.int32)[None]
    out = generate(params, cfg, prompt, config.sample_tokens, max_len=prompt.shape[1] + config.sample_tokens)
    print(f"greedy sample:\n{config.sample_prompt}{pipe.tokenizer.decode(out[0])}")


if __name__ == "__main__":
    app.run(main)
