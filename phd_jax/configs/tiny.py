"""Tiny config for tests: 2 layers, d_model 32, 4 query / 4 KV heads (shardable over tensor=4).

Compiles in seconds on a CPU; `python train.py --config=configs/tiny.py:PHD-3`.
"""

from phd_jax.train.config import apply_model_name, base_config


def get_config(name: str | None = None):
    c = base_config()
    m = c.model
    m.variant, m.repeat = "phd", 2
    m.num_layers, m.d_model, m.num_heads, m.num_kv_heads, m.head_dim, m.mlp_dim = 2, 32, 4, 4, 8, 64
    m.max_seq_len, m.block_q, m.block_kv = 64, 16, 16
    c.seq_len, c.batch_size, c.num_steps = 32, 8, 20
    c.learning_rate, c.warmup_steps = 1e-2, 2
    c.log_every, c.eval_every, c.eval_batches = 5, 10, 2
    c.checkpoint_every, c.keep_checkpoints = 10, 3
    c.sample_prompt, c.sample_tokens = "ROMEO.\n", 16
    return apply_model_name(c, name)
