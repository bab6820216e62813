"""Small config (about 25M parameters) for CPU and single-GPU experiments.

The file is phd_jax/configs/small.py, shipped with the package (so `--config=configs/small.py`
works from a wheel too); this one keeps the spelling in a checkout. Copy that file to make your own.
"""

from phd_jax.configs.small import get_config  # noqa: F401
