"""The reproduction study's model: byte-level, 4 layers, d_model 128, ~1.0M parameters.

    python train.py --config=configs/repro.py:PHD-SWA-2-16-inf --workdir=runs/x
    python -m experiments.loss_vs_k            # the sweeps in experiments/ build on this file

Why this size: the whole study (about 130 vanilla-run equivalents, 3 seeds) must fit in about
three hours on a 2-core CPU, so a vanilla run of 250 steps gets about 80 s. A 4-layer d_model-128
model with 128-byte windows trains at roughly 3-4 steps/s there (16 x 128 bytes a step) and
its validation loss still falls steadily at the end of a run, so differences between variants
are differences in how fast the architecture learns, which is what the paper's claims are about.
Why bytes, not a BPE trained on the corpus: nothing to train or cache, no tokenizer choice
between variants, and at d_model 128 a BPE vocabulary of a few thousand would put most of the
parameters in the embedding. Sequences of 128 original positions leave room for the paper's
window (W = 16 hidden tokens) and chunks (C = 16, 32 positions: 8 and 4 chunks a sequence).

Everything is overridable (`--config.model.d_model=512 --config.model.num_layers=8 ...`),
so the same sweep runs a larger model on a GPU or TPU.
"""

from phd_jax.train.config import apply_model_name, base_config


def get_config(name: str | None = None):
    c = base_config()
    m = c.model
    m.variant, m.repeat = "vanilla", 1
    m.num_layers, m.d_model, m.num_heads, m.num_kv_heads, m.head_dim, m.mlp_dim = 4, 128, 4, 2, 32, 512
    m.max_seq_len = 128
    c.seq_len, c.batch_size = 128, 16
    c.num_steps, c.learning_rate, c.warmup_steps = 250, 3e-3, 25
    c.log_every, c.eval_every, c.eval_batches = 5, 25, 8
    c.checkpoint_every, c.keep_checkpoints = 50, 2
    c.sample_tokens = 0  # sweeps do not sample; train.py users can set it
    return apply_model_name(c, name)
