"""The paper's 550M model (docs/spec.md section 6; Table 2: 300B tokens), vanilla by default.

The file is phd_jax/configs/paper_550m.py, shipped with the package (so `--config=configs/paper_550m.py`
works from a wheel too); this one keeps the spelling in a checkout. Copy that file to make your own.
"""

from phd_jax.configs.paper_550m import get_config  # noqa: F401
