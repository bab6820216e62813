"""Tiny config for tests: 2 layers, d_model 32, 4 query / 4 KV heads (shardable over tensor=4).

The file is phd_jax/configs/tiny.py, shipped with the package (so `--config=configs/tiny.py`
works from a wheel too); this one keeps the spelling in a checkout. Copy that file to make your own.
"""

from phd_jax.configs.tiny import get_config  # noqa: F401
