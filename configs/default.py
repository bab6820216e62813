"""Default training config: a small byte-level PHD-CSWA-2-16-32 on the Shakespeare corpus.

The file is phd_jax/configs/default.py, shipped with the package (so `--config=configs/default.py`
works from a wheel too); this one keeps the spelling in a checkout. Copy that file to make your own.
"""

from phd_jax.configs.default import get_config  # noqa: F401
