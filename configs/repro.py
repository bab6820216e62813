"""The reproduction study's model: byte-level, 4 layers, d_model 128, ~1.0M parameters.

The file is phd_jax/configs/repro.py, shipped with the package (so `--config=configs/repro.py`
works from a wheel too); this one keeps the spelling in a checkout. Copy that file to make your own.
"""

from phd_jax.configs.repro import get_config  # noqa: F401
