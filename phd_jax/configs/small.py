"""Small config (about 25M parameters) for CPU and single-GPU experiments.

8 layers, d_model 512, 8 query / 4 KV heads of 64, SwiGLU 1536, byte vocabulary (259 ids
padded to 384), tied embeddings, T = 512. Vanilla by default; PHD variants by paper name:
    python train.py --config=configs/small.py:PHD-CSWA-2-16-32 --workdir=runs/small-cswa
On a GPU add --config.model.dtype=bfloat16.
"""

from phd_jax.train.config import apply_model_name, base_config


def get_config(name: str | None = None):
    c = base_config()
    m = c.model
    m.num_layers, m.d_model, m.num_heads, m.num_kv_heads, m.head_dim, m.mlp_dim = 8, 512, 8, 4, 64, 1536
    m.max_seq_len = 1024
    c.seq_len, c.batch_size = 512, 16
    c.num_steps, c.warmup_steps, c.learning_rate = 2000, 100, 1e-3
    c.log_every, c.eval_every, c.eval_batches, c.checkpoint_every = 10, 200, 8, 200
    return apply_model_name(c, name)
