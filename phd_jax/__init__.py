"""phd-jax: the PHD-Transformer (arXiv 2504.14992) in JAX/Flax.

The public names below are imported on first use (PEP 562), so that `import phd_jax.hostmem`
(which command-line programs run before anything else) does not first import JAX and Flax.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.3.1"  # the one place: pyproject.toml reads it

# public name -> the module that defines it
_PUBLIC = {
    "MAX_TOKENS_PER_SEQUENCE": "config",
    "ConfigError": "errors",
    "check_params": "model",
    "checked": "errors",
    "ModelConfig": "config",
    "DecodeState": "decode",
    "decode_step": "decode",
    "init_state": "decode",
    "kv_cache_bytes": "decode",
    "prefill": "decode",
    "prefill_token_counts": "decode",
    "load_hf": "interop",
    "load_hf_llama": "interop",
    "load_hf_tokenizer": "interop",
    "save_hf": "interop",
    "save_hf_llama": "interop",
    "attention_mask": "masks",
    "forward": "model",
    "init_params": "model",
    "num_params": "model",
    "param_logical_axes": "model",
    "generate": "sampling",
    "sample_token": "sampling",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'phd_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"phd_jax.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from phd_jax.config import MAX_TOKENS_PER_SEQUENCE, ModelConfig
    from phd_jax.decode import DecodeState, decode_step, init_state, kv_cache_bytes, prefill, prefill_token_counts
    from phd_jax.errors import ConfigError, checked
    from phd_jax.interop import load_hf, load_hf_llama, load_hf_tokenizer, save_hf, save_hf_llama
    from phd_jax.masks import attention_mask
    from phd_jax.model import check_params, forward, init_params, num_params, param_logical_axes
    from phd_jax.sampling import generate, sample_token
