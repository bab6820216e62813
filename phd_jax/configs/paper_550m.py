"""The paper's 550M model (docs/spec.md section 6; Table 2: 300B tokens), vanilla by default.

From the paper: 16 layers, d_model 1536, SwiGLU 4096, 16 query / 4 KV heads, built on OLMo2,
so the OLMo2 block (`norm_position="post"`: RMSNorm on the attention and MLP outputs inside the
residual, no input norm; `qk_norm="projection"`: RMSNorm over the whole query and key projections
before RoPE).
Where the paper is silent we chose (and say so): head_dim 96 (= d_model / heads); the rest as
in `paper_1b.py` (vocabulary 100352 with tied embeddings, which gives 0.55B parameters; T = 2048,
512 sequences per step, 300B tokens = 286,102 steps; RoPE theta and norm epsilon at our defaults)
except lr 6e-4 for the smaller model.
The paper's PHD runs are one-line overrides (Table 2, PHD-SWA-K-16-inf):
    python train.py --config=configs/paper_550m.py:PHD-SWA-2-16-inf
    python train.py --config=configs/paper_550m.py:PHD-SWA-3-16-inf
    python train.py --config=configs/paper_550m.py:PHD-SWA-5-16-inf
"""

from phd_jax.train.config import apply_model_name, paper_config


def get_config(name: str | None = None):
    c = paper_config(16, 1536, 4096, 16, 4, 96, learning_rate=6e-4, tokens=300 * 10**9)
    return apply_model_name(c, name)
