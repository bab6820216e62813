"""The paper's 1.2B model (docs/spec.md section 6; Table 1: 500B tokens), vanilla by default.

From the paper: 16 layers, d_model 2048, SwiGLU 8192, 32 query / 8 KV heads of 64, built on
OLMo2, so the OLMo2 block (`norm_position="post"`: RMSNorm on the attention and MLP outputs
inside the residual, no input norm; `qk_norm="projection"`: RMSNorm over the whole query and key
projections before RoPE).
Where the paper is silent we chose (and say so):
- vocabulary 100352 (OLMo2's 100278-token tokenizer padded to a multiple of 128) with tied
  embeddings: this is what makes the count 1.18B = "1.2B"; point `--config.data.tokenizer` at
  that tokenizer (the byte default only fills the first 259 ids);
- T = 2048 (max 4096), 512 sequences per step (1M tokens; 500B tokens = 476,837 steps),
  AdamW lr 4e-4 (cosine to 10%, 2000 warmup steps), weight decay 0.1, clip 1.0, b2 0.95;
- RoPE theta 10000 and norm epsilon 1e-6 (phd_jax's defaults; the paper gives neither);
- bfloat16 compute, float32 parameters, remat "dots", tiles of 512, pure FSDP over all devices.
The paper's PHD runs are one-line overrides (Table 1):
    python train.py --config=configs/paper_1b.py:PHD-CSWA-2-16-32
    python train.py --config=configs/paper_1b.py:PHD-CSWA-3-16-32
"""

from phd_jax.train.config import apply_model_name, paper_config


def get_config(name: str | None = None):
    c = paper_config(16, 2048, 8192, 32, 8, 64, learning_rate=4e-4, tokens=500 * 10**9)
    return apply_model_name(c, name)
