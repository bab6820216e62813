"""phd-jax: the PHD-Transformer (arXiv 2504.14992) in JAX/Flax."""
__version__ = "0.1.0"   # the one place: pyproject.toml reads it

from phd_jax.checks import MAX_TOKENS_PER_SEQUENCE, ConfigError, check_params, checked
from phd_jax.config import ModelConfig
from phd_jax.decode import (DecodeState, decode_step, init_state, kv_cache_bytes, prefill,
                            prefill_token_counts)
from phd_jax.interop import load_hf_llama, load_hf_tokenizer, save_hf_llama
from phd_jax.masks import attention_mask
from phd_jax.model import forward, init_params, num_params, param_logical_axes
from phd_jax.sampling import generate, sample_token

__all__ = [
    "MAX_TOKENS_PER_SEQUENCE", "ConfigError", "check_params", "checked",
    "DecodeState", "ModelConfig", "attention_mask", "decode_step", "forward", "generate",
    "init_params", "init_state", "kv_cache_bytes", "load_hf_llama", "load_hf_tokenizer", "num_params",
    "param_logical_axes", "prefill", "prefill_token_counts", "sample_token", "save_hf_llama",
]
