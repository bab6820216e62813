"""`config.json` <-> `ModelConfig` for the Hugging Face architectures phd_jax runs.

| architecture (model_type)          | block fields                                   |
|------------------------------------|------------------------------------------------|
| `LlamaForCausalLM` (`llama`)       | the defaults: pre-norm, no q/k norm, no biases |
| `Qwen2ForCausalLM` (`qwen2`)       | `qkv_bias=True`                                |
| `Qwen3ForCausalLM` (`qwen3`)       | `qk_norm="head"`                               |
| `Olmo2ForCausalLM` (`olmo2`)       | `norm_position="post"`, `qk_norm="projection"` |

Any of them may carry Llama 3 rope scaling (`rope_type: llama3`). A model with K > 1 copies per
token (PHD, naive) is a different model from the one it was converted from: it is saved under
`model_type` `phd_<model_type>` and architecture `Phd<Architecture>` (`phd_olmo2`,
`PhdOlmo2ForCausalLM`), names transformers does not know, so it refuses the checkpoint by name
instead of running it as the original model. `config_from_hf` reads both spellings.

The fields that shape the weights (`ARCH_FIELDS`) come from the checkpoint; every other
`ModelConfig` field (`PHD_FIELDS`: variant, K, W, C, dtypes, kernels) is recorded under
`"phd_jax"` in `config.json` on save and read back on load. A feature of the checkpoint that
phd_jax does not implement is refused by name, never ignored.
"""

from __future__ import annotations

import dataclasses

from phd_jax.config import ARCHITECTURE_FIELDS, ModelConfig, as_qk_norm
from phd_jax.errors import ConfigError, fail

# model_type -> (architecture, the block fields it implies)
MODEL_TYPES = {
    "llama": ("LlamaForCausalLM", {}),
    "qwen2": ("Qwen2ForCausalLM", {"qkv_bias": True}),
    "qwen3": ("Qwen3ForCausalLM", {"qk_norm": "head"}),
    "olmo2": ("Olmo2ForCausalLM", {"norm_position": "post", "qk_norm": "projection"}),
}
ARCHITECTURES = tuple(arch for arch, _ in MODEL_TYPES.values())  # the transformers class names
PHD_PREFIX_TYPE, PHD_PREFIX_ARCH = "phd_", "Phd"  # K > 1: phd_<model_type>, Phd<Architecture>
# The block fields and their values in a Llama block (ModelConfig's defaults).
BLOCK_DEFAULTS = {"norm_position": "pre", "qk_norm": "none", "qkv_bias": False}
# Llama 3 rope parameters in config.json -> ModelConfig field.
_LLAMA3_KEYS = {
    "factor": "rope_factor",
    "low_freq_factor": "rope_low_freq_factor",
    "high_freq_factor": "rope_high_freq_factor",
    "original_max_position_embeddings": "rope_original_max_len",
}

# config.json key -> ModelConfig field: these shape the weights, so they come from the checkpoint.
_ARCH_KEYS = {
    "vocab_size": "vocab_size",
    "num_hidden_layers": "num_layers",
    "hidden_size": "d_model",
    "num_attention_heads": "num_heads",
    "intermediate_size": "mlp_dim",
    "rms_norm_eps": "norm_eps",
}
ARCH_FIELDS = ARCHITECTURE_FIELDS  # they shape the weights or fix the function: from the checkpoint
# Everything else in ModelConfig: PHD fields, dtypes, kernels, training knobs (recorded under "phd_jax").
PHD_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig) if f.name not in ARCH_FIELDS)
# Features phd_jax does not implement (any model_type): refused by name, never silently ignored.
_MUST_BE = {
    "hidden_act": ("silu",),
    "attention_bias": (False, None),  # q, k, v AND o biases (Qwen2's q/k/v biases are its own)
    "mlp_bias": (False, None),
    "pretraining_tp": (1, None),
}
_DTYPES = {
    "float32": "float32",
    "bfloat16": "bfloat16",
    "float16": "float16",
    "F32": "float32",
    "BF16": "bfloat16",
    "F16": "float16",
}
_MOE_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_intermediate_size")


def architecture(hf: dict, where: str = "config.json", allowed=None) -> tuple[str, bool]:
    """(the base model_type, whether it is a PHD checkpoint) of a `config.json` dict."""
    allowed = tuple(allowed or MODEL_TYPES)
    model_type = hf.get("model_type")
    arch = hf.get("architectures") or [None]  # absent: the model_type alone decides
    phd = isinstance(model_type, str) and model_type.startswith(PHD_PREFIX_TYPE)
    base = model_type[len(PHD_PREFIX_TYPE) :] if phd else model_type
    want = None
    if base in allowed:
        want = PHD_PREFIX_ARCH * phd + MODEL_TYPES[base][0]
    if want is None or arch[0] not in (want, None) or len(arch) != 1:
        moe = [k for k in _MOE_KEYS if hf.get(k)]
        names = ", ".join(f"{MODEL_TYPES[t][0]} ({t!r})" for t in allowed)
        fail(
            f"{where}.architectures",
            hf.get("architectures"),
            ("only Llama checkpoints" if allowed == ("llama",) else "only the architectures")
            + f" {names} (and their PHD forms Phd<Architecture>, 'phd_<model_type>') are supported; got "
            f"model_type {model_type!r}" + (f" (mixture of experts: {', '.join(moe)})" if moe else ""),
            ConfigError,
        )
    return base, phd


def _rope_kind(params, key: str, where: str) -> dict:
    """The rope scaling fields of one `rope_parameters` / `rope_scaling` dict."""
    if not isinstance(params, dict):
        fail(f"{where}.{key}", params, "must be a JSON object", ConfigError)
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return {}
    if kind != "llama3":
        fail(
            f"{where}.{key}.rope_type",
            kind,
            "only 'default' RoPE and Llama 3 scaling ('llama3') are implemented (no linear / dynamic / YaRN)",
            ConfigError,
        )
    missing = [k for k in _LLAMA3_KEYS if k not in params]
    if missing:
        fail(f"{where}.{key}.rope_type", kind, f"Llama 3 rope scaling needs {', '.join(missing)}", ConfigError)
    return {"rope_scaling": "llama3", **{field: params[k] for k, field in _LLAMA3_KEYS.items()}}


def _rope(hf: dict, where: str) -> dict:
    """rope_theta and the rope scaling fields, from transformers >= 5 (`rope_parameters`) or older
    (`rope_theta`, `rope_scaling`); a config that holds both must say the same in both."""
    found = {k: _rope_kind(hf[k], k, where) for k in ("rope_parameters", "rope_scaling") if hf.get(k) is not None}
    if len(set(map(str, found.values()))) > 1:
        fail(f"{where}.rope_scaling", hf["rope_scaling"], "disagrees with rope_parameters", ConfigError)
    theta = (hf.get("rope_parameters") or {}).get("rope_theta", hf.get("rope_theta", 10000.0))
    return {"rope_theta": float(theta), **next(iter(found.values()), {})}


def _check_sliding_window(hf: dict, where: str):
    """Qwen2/Qwen3 carry `sliding_window` even when no layer uses it: refuse only layers that do."""
    types = hf.get("layer_types")
    if isinstance(types, list):
        used = [i for i, t in enumerate(types) if t != "full_attention"]
    elif hf.get("use_sliding_window") and hf.get("sliding_window"):
        first = hf.get("max_window_layers", 0) or 0  # transformers < 5: layers from this index on slide
        used = list(range(first, hf["num_hidden_layers"]))
    else:
        used = []
    if used:
        fail(
            f"{where}.use_sliding_window",
            hf.get("use_sliding_window"),
            f"layer(s) {used[:8]}{'...' if len(used) > 8 else ''} use sliding-window attention "
            f"(sliding_window={hf.get('sliding_window')}), which phd_jax does not implement",
            ConfigError,
        )


def config_from_hf(hf: dict, where: str = "config.json", *, allowed=None, **overrides) -> ModelConfig:
    """The ModelConfig of a `config.json` dict, then its recorded `phd_jax` fields, then `overrides`.

    `overrides` may set the fields in `PHD_FIELDS` (variant, repeat, window, chunk,
    position_mode, dtype, param_dtype, attention, max_seq_len, ...); fields that
    shape the weights come from the checkpoint and are refused. `allowed`: the model_types
    accepted (default: every one of `MODEL_TYPES`).
    """
    base, _ = architecture(hf, where, allowed)
    missing = [k for k in (*_ARCH_KEYS, "num_key_value_heads", "max_position_embeddings") if k not in hf]
    if missing:
        raise ConfigError(
            f"{where} is missing required key(s) {', '.join(missing)} (a {base} config needs all of them)"
        )
    for key, ok in _MUST_BE.items():
        if hf.get(key, ok[-1]) not in ok:
            fail(
                f"{where}.{key}",
                hf[key],
                f"phd_jax implements only {ok[0]!r} (refusing rather than "
                "ignoring a feature the model would not reproduce)",
                ConfigError,
            )
    _check_sliding_window(hf, where)
    fields = {field: hf[key] for key, field in _ARCH_KEYS.items()}
    fields["num_kv_heads"] = hf["num_key_value_heads"] or hf["num_attention_heads"]
    fields["head_dim"] = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
    fields.update(_rope(hf, where))
    fields["tie_embeddings"] = bool(hf.get("tie_word_embeddings", False))
    fields.update(BLOCK_DEFAULTS, **MODEL_TYPES[base][1])
    fields["max_seq_len"] = hf["max_position_embeddings"]
    stored = _DTYPES.get(str(hf.get("dtype", hf.get("torch_dtype", "float32"))), "float32")
    fields["dtype"] = fields["param_dtype"] = stored
    recorded = hf.get("phd_jax") or {}
    unknown = sorted(set(recorded) - set(PHD_FIELDS))
    if unknown:
        raise ConfigError(f"{where}.phd_jax has unknown field(s) {unknown}; allowed: {', '.join(PHD_FIELDS)}")
    fields.update(recorded)
    for name in overrides:
        if name in ARCH_FIELDS:
            fail(
                name,
                overrides[name],
                f"is read from the checkpoint ({fields.get(name)!r}): it shapes "
                f"the weights; overridable fields: {', '.join(PHD_FIELDS)}",
                ConfigError,
            )
        if name not in PHD_FIELDS:
            fail(name, overrides[name], f"not a ModelConfig field; overridable: {', '.join(PHD_FIELDS)}", ConfigError)
    fields.update(overrides)
    return _model_config(fields, where)


def _model_config(fields: dict, where: str) -> ModelConfig:
    try:
        return ModelConfig(**fields)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


def block_of(cfg: ModelConfig) -> dict:
    """`cfg`'s block fields (qk_norm spelled as a string)."""
    out = {f: getattr(cfg, f) for f in BLOCK_DEFAULTS}
    return {**out, "qk_norm": as_qk_norm("ModelConfig.qk_norm", out["qk_norm"])}


def model_type_of(cfg: ModelConfig, allowed=None) -> str:
    """The base model_type whose block is `cfg`'s; a ConfigError naming the fields if none is."""
    block = block_of(cfg)
    for model_type in allowed or MODEL_TYPES:
        if block == {**BLOCK_DEFAULTS, **MODEL_TYPES[model_type][1]}:
            return model_type
    shown = ", ".join(f"{k}={v!r}" for k, v in block.items())
    known = "; ".join(
        f"{MODEL_TYPES[t][0]}: " + (", ".join(f"{k}={v!r}" for k, v in MODEL_TYPES[t][1].items()) or "the defaults")
        for t in allowed or MODEL_TYPES
    )
    raise ConfigError(
        f"ModelConfig block ({shown}) is no Hugging Face architecture phd_jax can save "
        f"(qk_norm: Llama has no QK-norm); savable: {known}"
    )


def config_to_hf(cfg: ModelConfig, allowed=None) -> dict:
    """The `config.json` dict for `cfg`: its architecture (`phd_<type>` / `Phd<Arch>` when
    K > 1), its PHD fields under `"phd_jax"`."""
    base = model_type_of(cfg, allowed)
    phd = cfg.repeat > 1
    hf = {
        "architectures": [PHD_PREFIX_ARCH * phd + MODEL_TYPES[base][0]],
        "model_type": PHD_PREFIX_TYPE * phd + base,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.mlp_dim,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "dtype": cfg.param_dtype,
        "initializer_range": cfg.init_std,
        "use_cache": True,
    }
    if cfg.rope_scaling == "llama3":
        scaling = {k: getattr(cfg, field) for k, field in _LLAMA3_KEYS.items()}
        hf["rope_parameters"] = {"rope_type": "llama3", "rope_theta": cfg.rope_theta, **scaling}
        hf["rope_scaling"] = {"rope_type": "llama3", **scaling}  # what transformers < 5 reads
    if base == "llama":
        hf.update(mlp_bias=False, pretraining_tp=1)
    if base in ("qwen2", "qwen3"):
        hf.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.num_layers)
        hf["layer_types"] = ["full_attention"] * cfg.num_layers
    hf["phd_jax"] = {f: getattr(cfg, f) for f in PHD_FIELDS}
    return hf
