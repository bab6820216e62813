"""Default training config: a small byte-level PHD-CSWA-2-16-32 on the Shakespeare corpus.

Trains in about three minutes on a 2-core CPU. Override anything from the command line:
    python train.py --config.model.repeat=3 --config.num_steps=1000
Pick another variant by its paper name (0 means "none" for window / chunk):
    python train.py --config=configs/default.py:PHD-SWA-3-16-inf
    python train.py --config=configs/default.py:vanilla
"""

from phd_jax.train.config import apply_model_name, base_config


def get_config(name: str | None = None):
    c = base_config()
    m = c.model
    m.variant, m.repeat, m.window, m.chunk = "phd_cswa", 2, 16, 32
    return apply_model_name(c, name)
