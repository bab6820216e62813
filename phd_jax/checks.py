"""Deprecated: the checks now live beside what they check (this module only re-exports them).

`phd_jax.errors` holds the error types and the object-independent checks; `phd_jax.config`
the config's (`check_config`, `check_tokens`, `MAX_TOKENS_PER_SEQUENCE`, ...); `phd_jax.model`
the parameters' (`check_params`); `phd_jax.decode` the decode state's (`check_state`, ...);
`phd_jax.sampling` the sampling arguments' (`check_sampling`). Each old name still works here,
with a DeprecationWarning naming its new home.
"""

from __future__ import annotations

import importlib
import warnings

# old name -> the module that defines it now
_MOVED = {
    **dict.fromkeys(
        (
            "ConfigError",
            "ConfigTypeError",
            "fail",
            "is_traced",
            "is_int",
            "as_int",
            "as_float",
            "as_bool",
            "one_of",
            "as_rng",
            "as_token_id",
            "checked",
        ),
        "errors",
    ),
    **dict.fromkeys(
        ("MAX_TOKENS_PER_SEQUENCE", "check_config", "check_tokens", "check_tokens_per_sequence", "check_max_len"),
        "config",
    ),
    "AXIS_FIELDS": "params",
    "check_params": "model",
    **dict.fromkeys(("check_state", "check_room", "check_lengths"), "decode"),
    "check_sampling": "sampling",
}


def __getattr__(name: str):
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module 'phd_jax.checks' has no attribute {name!r}")
    warnings.warn(f"phd_jax.checks.{name} is deprecated: use phd_jax.{module}.{name}", DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module(f"phd_jax.{module}"), name)


def __dir__():
    return sorted(_MOVED)
