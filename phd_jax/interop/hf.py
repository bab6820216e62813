"""Hugging Face checkpoints in and out: `config.json` + `*.safetensors`, no torch.

`load_hf(path, **overrides)` reads an `Olmo2ForCausalLM`, `Qwen2ForCausalLM`,
`Qwen3ForCausalLM` or `LlamaForCausalLM` checkpoint (Llama 3 rope scaling included), or one that
`save_hf` wrote; `save_hf(params, cfg, path)` writes one back. `load_hf_llama` / `save_hf_llama`
are the same, restricted to Llama. What maps to what: `hf_config` (config.json, the names of PHD
checkpoints), `hf_tensors` (the weights), `hf_files` (the files).

PHD adds no parameters, so any such checkpoint can be loaded as a PHD model (`variant`,
`repeat`, ... as overrides) and continued from there (up-training). `save_hf` records every
field of `ModelConfig` that the architecture does not fix under `"phd_jax"` in `config.json`,
so `load_hf` gives back the same model; a model with K > 1 is saved under its own names
(`phd_llama`, `PhdLlamaForCausalLM`, ...), which transformers refuses instead of running it as
the original architecture.
"""

from __future__ import annotations

import os

from phd_jax import paths
from phd_jax.config import ModelConfig
from phd_jax.interop.hf_config import (
    ARCH_FIELDS,
    ARCHITECTURES,
    MODEL_TYPES,
    PHD_FIELDS,
    architecture,
    config_from_hf,
    config_to_hf,
)
from phd_jax.interop.hf_files import CONFIG_FILE, INDEX_FILE, WEIGHTS_FILE, read_config, weight_files, write_checkpoint
from phd_jax.interop.hf_tensors import hf_state_dict, read_params

__all__ = [
    "ARCHITECTURES",
    "ARCH_FIELDS",
    "CONFIG_FILE",
    "INDEX_FILE",
    "MODEL_TYPES",
    "PHD_FIELDS",
    "WEIGHTS_FILE",
    "architecture",
    "config_from_hf",
    "config_to_hf",
    "hf_config",
    "hf_state_dict",
    "load_hf",
    "load_hf_llama",
    "save_hf",
    "save_hf_llama",
]


def hf_config(path: str, **overrides) -> ModelConfig:
    """The ModelConfig of checkpoint directory `path` (its `config.json` only, no weights read)."""
    hf, file = read_config(os.fspath(path))
    return config_from_hf(hf, file, **overrides)


def load_hf(path: str, *, _allowed=None, **overrides):
    """Read a local Hugging Face checkpoint directory; return `(ModelConfig, params)`.

    The architecture comes from `config.json` (`architectures` / `model_type`: OLMo2, Qwen2,
    Qwen3, Llama, or their PHD forms written by `save_hf`). `overrides` set PHD and inference
    fields (`variant="phd", repeat=2`, `window`, `chunk`, `dtype`, `param_dtype`, `attention`,
    `max_seq_len`, `scan_layers`, ...). Weights are cast to `param_dtype` (default: the
    checkpoint's dtype). Nothing is downloaded; torch is not needed. The tokenizer beside the
    weights: `load_hf_tokenizer(path)`.
    """
    import jax
    import jax.numpy as jnp

    path = os.fspath(path)
    if paths.is_remote(path):  # gs://...: safetensors reads local files, so a staged copy
        if not paths.isdir(path):
            raise FileNotFoundError(f"Hugging Face checkpoint directory {path} does not exist")
        with paths.staged(path, names=lambda name: name.endswith((".json", ".safetensors"))) as local:
            return load_hf(local, _allowed=_allowed, **overrides)
    hf, file = read_config(path)
    cfg = config_from_hf(hf, file, allowed=_allowed, **overrides)
    params = read_params(weight_files(path), cfg, path)
    return cfg, jax.tree.map(jnp.asarray, params)


def save_hf(
    params,
    cfg: ModelConfig,
    path: str,
    *,
    max_shard_size=None,
    overwrite: bool = False,
    tokenizer_dir: str | None = None,
    _allowed=None,
) -> str:
    """Write `params` as a Hugging Face checkpoint (`config.json` + safetensors) in directory `path`.

    The architecture follows `cfg`'s block (Llama, Qwen2, Qwen3 or OLMo2; `phd_<type>` /
    `Phd<Architecture>` when K > 1). Weights are written in `cfg.param_dtype`.
    `max_shard_size` (bytes or '500MB') splits them into shards with an index file. Refuses a
    directory that already holds a checkpoint unless `overwrite=True`. `tokenizer_dir`: copy the
    tokenizer's files (`tokenizer.json`, `tokenizer_config.json`, ...) from there. Everything is
    written to a temporary directory first, so a failure leaves `path` as it was.
    """
    hf = config_to_hf(cfg, _allowed)
    tensors = hf_state_dict(params, cfg)  # checks every shape before anything is written
    return write_checkpoint(
        path, hf, tensors, max_shard_size=max_shard_size, overwrite=overwrite, tokenizer_dir=tokenizer_dir
    )


def load_hf_llama(path: str, **overrides):
    """`load_hf` for Llama checkpoints only (other architectures are refused by name)."""
    return load_hf(path, _allowed=("llama",), **overrides)


def save_hf_llama(params, cfg: ModelConfig, path: str, **kwargs) -> str:
    """`save_hf` for a model with a Llama block only (others are refused, naming the fields).

    Like `save_hf`, a PHD model (K > 1) is written as `phd_llama` / `PhdLlamaForCausalLM`, which
    transformers refuses by name instead of running it as a plain Llama (0.2.0 wrote the Llama
    names); `load_hf_llama` and `load_hf` read both.
    """
    return save_hf(params, cfg, path, _allowed=("llama",), **kwargs)
