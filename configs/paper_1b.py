"""The paper's 1.2B model (docs/spec.md section 6; Table 1: 500B tokens), vanilla by default.

The file is phd_jax/configs/paper_1b.py, shipped with the package (so `--config=configs/paper_1b.py`
works from a wheel too); this one keeps the spelling in a checkout. Copy that file to make your own.
"""

from phd_jax.configs.paper_1b import get_config  # noqa: F401
