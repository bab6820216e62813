"""Our parameter pytree <-> Hugging Face tensor names and layouts, for every architecture of
`hf_config.MODEL_TYPES`.

transformers applies rotate-half RoPE to `q_proj`/`k_proj` outputs exactly like
`phd_jax.model.apply_rope` (first half of each head's features paired with the second half),
so projections map over with a transpose and a reshape, with no q/k permutation. Vectors
(norm scales, biases) map by a reshape to our shape (`[heads, head_dim]` or `[d]`).
"""

from __future__ import annotations

import re

import numpy as np

from phd_jax.config import ModelConfig
from phd_jax.errors import ConfigError
from phd_jax.interop.hf_config import block_of
from phd_jax.interop.hf_files import safe_open

# Tensors a checkpoint may hold that carry no weights of the model.
_IGNORABLE = re.compile(r".*rotary_emb\.inv_freq$")


def _layer_map(cfg: ModelConfig):
    """[(our path inside a layer, HF name, HF shape, ours -> HF, HF -> ours)]: the block of `cfg`."""
    d, h, kvh, hd, f = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
    block = block_of(cfg)

    def proj(heads):  # [D, heads, hd] <-> [heads*hd, D]
        return ((heads * hd, d), lambda w: w.reshape(d, heads * hd).T, lambda w: w.T.reshape(d, heads, hd))

    def lin(n_in, n_out):  # [in, out] <-> [out, in]
        return ((n_out, n_in), lambda w: w.T, lambda w: w.T)

    def vec(n, ours):  # a vector of n values, our layout `ours`
        return ((n,), lambda w: w.reshape(-1), lambda w: w.reshape(ours))

    table = [
        (("attention", "query", "kernel"), "self_attn.q_proj.weight", proj(h)),
        (("attention", "key", "kernel"), "self_attn.k_proj.weight", proj(kvh)),
        (("attention", "value", "kernel"), "self_attn.v_proj.weight", proj(kvh)),
        (
            ("attention", "out", "kernel"),
            "self_attn.o_proj.weight",
            ((d, h * hd), lambda w: w.reshape(h * hd, d).T, lambda w: w.T.reshape(h, hd, d)),
        ),
        (("mlp", "gate", "kernel"), "mlp.gate_proj.weight", lin(d, f)),
        (("mlp", "up", "kernel"), "mlp.up_proj.weight", lin(d, f)),
        (("mlp", "down", "kernel"), "mlp.down_proj.weight", lin(f, d)),
    ]
    if block["norm_position"] == "pre":  # x + attn(norm(x)); x + mlp(norm(x))
        table += [
            (("attention_norm", "scale"), "input_layernorm.weight", vec(d, (d,))),
            (("mlp_norm", "scale"), "post_attention_layernorm.weight", vec(d, (d,))),
        ]
    else:  # OLMo2: x + norm(attn(x)); x + norm(mlp(x))
        table += [
            (("post_attention_norm", "scale"), "post_attention_layernorm.weight", vec(d, (d,))),
            (("post_mlp_norm", "scale"), "post_feedforward_layernorm.weight", vec(d, (d,))),
        ]
    if block["qk_norm"] == "head":  # Qwen3: one [hd] scale shared by every head
        table += [
            (("attention", "query_norm", "scale"), "self_attn.q_norm.weight", vec(hd, (hd,))),
            (("attention", "key_norm", "scale"), "self_attn.k_norm.weight", vec(hd, (hd,))),
        ]
    elif block["qk_norm"] == "projection":  # OLMo2: a scale per feature of the whole projection
        table += [
            (("attention", "query_norm", "scale"), "self_attn.q_norm.weight", vec(h * hd, (h, hd))),
            (("attention", "key_norm", "scale"), "self_attn.k_norm.weight", vec(kvh * hd, (kvh, hd))),
        ]
    if block["qkv_bias"]:  # Qwen2
        table += [
            (("attention", "query", "bias"), "self_attn.q_proj.bias", vec(h * hd, (h, hd))),
            (("attention", "key", "bias"), "self_attn.k_proj.bias", vec(kvh * hd, (kvh, hd))),
            (("attention", "value", "bias"), "self_attn.v_proj.bias", vec(kvh * hd, (kvh, hd))),
        ]
    return [(path, name, shape, to_hf, from_hf) for path, name, (shape, to_hf, from_hf) in table]


def _global_map(cfg: ModelConfig):
    same = (lambda w: w, lambda w: w)
    out = [
        (("embed", "embedding"), "model.embed_tokens.weight", (cfg.vocab_size, cfg.d_model), *same),
        (("final_norm", "scale"), "model.norm.weight", (cfg.d_model,), *same),
    ]
    if not cfg.tie_embeddings:
        shape = (cfg.vocab_size, cfg.d_model)
        out.append((("unembed", "kernel"), "lm_head.weight", shape, lambda w: w.T, lambda w: w.T))
    return out


def _get(tree, path):
    for p in path:
        tree = tree[p]
    return tree


def _put(tree, path, value):
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def checked(x, shape, name, where):
    if tuple(x.shape) != tuple(shape):
        raise ConfigError(f"{where}: tensor {name!r} has shape {tuple(x.shape)}, but the config needs {tuple(shape)}")
    return x


def hf_state_dict(params, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """Our parameter pytree as HF tensors (numpy, in `cfg.param_dtype`)."""
    import jax

    params = jax.device_get(params)
    dt = np.dtype(cfg.weight_dtype)
    out = {}
    for path, name, shape, to_hf, _ in _global_map(cfg):
        out[name] = checked(np.asarray(to_hf(np.asarray(_get(params, path)))), shape, name, "params")
    for i in range(cfg.num_layers):
        layer = jax.tree.map(lambda x: x[i], params["layers"]) if cfg.scan_layers else params[f"layers_{i}"]
        for path, name, shape, to_hf, _ in _layer_map(cfg):
            full = f"model.layers.{i}.{name}"
            try:
                value = np.asarray(_get(layer, path))
            except (KeyError, TypeError):
                raise ConfigError(f"params: layer {i} has no {'/'.join(path)} (for tensor {full!r})") from None
            out[full] = checked(np.asarray(to_hf(value)), shape, full, "params")
    return {k: np.ascontiguousarray(v.astype(dt)) for k, v in out.items()}


def read_params(files: dict[str, str], cfg: ModelConfig, where: str) -> dict:
    """Our parameter pytree (numpy, `cfg.param_dtype`) from `files` (tensor name -> safetensors
    file); a ConfigError names a missing, unexpected or misshapen tensor."""
    expected = {name: (path_, shape, from_hf, None) for path_, name, shape, _, from_hf in _global_map(cfg)}
    for i in range(cfg.num_layers):
        for path_, name, shape, _, from_hf in _layer_map(cfg):
            expected[f"model.layers.{i}.{name}"] = (path_, shape, from_hf, i)
    missing = [n for n in expected if n not in files]
    if missing:
        raise ConfigError(
            f"{where}: the checkpoint lacks tensor(s) {', '.join(missing[:5])}"
            + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            + " that its config.json's architecture needs"
        )
    tied_head = cfg.tie_embeddings and "lm_head.weight" in files  # some tied checkpoints store it anyway
    extra = sorted(n for n in files if n not in expected and not _IGNORABLE.match(n))
    extra = [n for n in extra if not (tied_head and n == "lm_head.weight")]
    if extra:
        raise ConfigError(
            f"{where}: unexpected tensor(s) {', '.join(extra[:5])} (biases or other weights that the "
            "block config.json describes does not have)"
        )
    dt = np.dtype(cfg.weight_dtype)
    params: dict = {}
    stacked: dict = {}
    by_file: dict[str, list[str]] = {}
    for name in expected:
        by_file.setdefault(files[name], []).append(name)
    for file, names in by_file.items():
        with safe_open(file) as f:
            for name in names:
                path_, shape, from_hf, layer = expected[name]
                x = from_hf(checked(f.get_tensor(name), shape, name, file)).astype(dt)
                if layer is None:
                    _put(params, path_, x)
                elif cfg.scan_layers:
                    buf = stacked.get(path_)
                    if buf is None:
                        buf = stacked[path_] = np.empty((cfg.num_layers, *x.shape), dt)
                    buf[layer] = x
                else:
                    _put(params.setdefault(f"layers_{layer}", {}), path_, x)
    for path_, buf in stacked.items():
        _put(params.setdefault("layers", {}), path_, buf)
    return params
