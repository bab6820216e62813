"""Weights and tokenizers from outside the project: Hugging Face checkpoints (OLMo2, Qwen2, Qwen3,
Llama) in and out."""

from phd_jax.interop.hf import (
    PHD_FIELDS,
    config_from_hf,
    config_to_hf,
    hf_config,
    hf_state_dict,
    load_hf,
    load_hf_llama,
    save_hf,
    save_hf_llama,
)
from phd_jax.interop.tokenizer import load_hf_tokenizer

__all__ = [
    "PHD_FIELDS",
    "config_from_hf",
    "config_to_hf",
    "hf_config",
    "hf_state_dict",
    "load_hf",
    "load_hf_llama",
    "load_hf_tokenizer",
    "save_hf",
    "save_hf_llama",
]
