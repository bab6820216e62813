"""Hugging Face Llama checkpoints in and out: `config.json` + `*.safetensors`, no torch.

HF's Llama applies rotate-half RoPE to `q_proj`/`k_proj` outputs exactly like
`phd_jax.model.apply_rope` (first half of each head's features paired with the
second half), so the projection weights map over with a transpose and a reshape,
with no q/k permutation (`tests/test_interop.py` checks logits against
`transformers.LlamaForCausalLM`).

PHD adds no parameters, so any Llama can be loaded as a PHD model (`variant`,
`repeat`, ... as overrides) and continued from there (up-training). `save_hf_llama`
records every non-Llama field of `ModelConfig` under `"phd_jax"` in `config.json`,
so `load_hf_llama` gives back the same model. `transformers` ignores that key and
would run such a checkpoint as a plain Llama, which is wrong for K > 1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import tempfile

import numpy as np

from phd_jax import paths
from phd_jax.config import ModelConfig
from phd_jax.errors import ConfigError, fail

ARCHITECTURES = ("LlamaForCausalLM",)
CONFIG_FILE, WEIGHTS_FILE, INDEX_FILE = "config.json", "model.safetensors", "model.safetensors.index.json"

# config.json key -> ModelConfig field: these shape the weights, so they come from the checkpoint.
_ARCH_KEYS = {
    "vocab_size": "vocab_size",
    "num_hidden_layers": "num_layers",
    "hidden_size": "d_model",
    "num_attention_heads": "num_heads",
    "intermediate_size": "mlp_dim",
    "rms_norm_eps": "norm_eps",
}
_ARCH_FIELDS = (
    "vocab_size",
    "num_layers",
    "d_model",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "mlp_dim",
    "rope_theta",
    "norm_eps",
    "tie_embeddings",
    "qk_norm",
)
# Everything else in ModelConfig: PHD fields, dtypes, kernels, training knobs (recorded under "phd_jax").
PHD_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig) if f.name not in _ARCH_FIELDS)
# Features of the Llama config that phd_jax does not implement: refused, never silently ignored.
_MUST_BE = {
    "hidden_act": ("silu",),
    "attention_bias": (False, None),
    "mlp_bias": (False, None),
    "pretraining_tp": (1, None),
    "rope_scaling": (None,),
}
_DTYPES = {
    "float32": "float32",
    "bfloat16": "bfloat16",
    "float16": "float16",
    "F32": "float32",
    "BF16": "bfloat16",
    "F16": "float16",
}


# ---------------------------------------------------------------------------
# config.json <-> ModelConfig
# ---------------------------------------------------------------------------


def _read_json(path: str, what: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: {path} does not exist")
    try:
        with open(path) as f:
            out = json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{what}: {path} is not valid JSON ({e})") from None
    if not isinstance(out, dict):
        raise ConfigError(f"{what}: {path} must hold a JSON object")
    return out


def _rope_theta(hf: dict, where: str) -> float:
    """rope_theta from transformers >= 5 (`rope_parameters`) or older (`rope_theta`, `rope_scaling`)."""
    params = hf.get("rope_parameters")
    if params is not None:
        kind = params.get("rope_type", params.get("type", "default"))
        if kind != "default":
            fail(
                f"{where}.rope_parameters.rope_type",
                kind,
                "only 'default' RoPE is implemented (no scaled / YaRN / Llama-3 RoPE)",
                ConfigError,
            )
        if "rope_theta" in params:
            return float(params["rope_theta"])
    return float(hf.get("rope_theta", 10000.0))


def config_from_hf(hf: dict, where: str = "config.json", **overrides) -> ModelConfig:
    """The ModelConfig of a Llama `config.json` dict, then its recorded `phd_jax` fields, then `overrides`.

    `overrides` may set the fields in `PHD_FIELDS` (variant, repeat, window, chunk,
    position_mode, dtype, param_dtype, attention, max_seq_len, ...); fields that
    shape the weights come from the checkpoint and are refused.
    """
    arch = hf.get("architectures") or [None]
    if hf.get("model_type") != "llama" or arch[0] not in ARCHITECTURES or len(arch) != 1:
        fail(
            f"{where}.architectures",
            hf.get("architectures"),
            f"only Llama checkpoints (model_type 'llama', architectures {list(ARCHITECTURES)}) are "
            f"supported; got model_type {hf.get('model_type')!r}",
            ConfigError,
        )
    missing = [k for k in (*_ARCH_KEYS, "num_key_value_heads", "max_position_embeddings") if k not in hf]
    if missing:
        raise ConfigError(f"{where} is missing required key(s) {', '.join(missing)} (a Llama config needs all of them)")
    for key, ok in _MUST_BE.items():
        if hf.get(key, ok[-1]) not in ok:
            fail(
                f"{where}.{key}",
                hf[key],
                f"phd_jax implements only {ok[0]!r} (refusing rather than "
                "ignoring a feature the model would not reproduce)",
                ConfigError,
            )
    fields = {field: hf[key] for key, field in _ARCH_KEYS.items()}
    fields["num_kv_heads"] = hf["num_key_value_heads"] or hf["num_attention_heads"]
    fields["head_dim"] = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
    fields["rope_theta"] = _rope_theta(hf, where)
    fields["tie_embeddings"] = bool(hf.get("tie_word_embeddings", False))
    fields["max_seq_len"] = hf["max_position_embeddings"]
    stored = _DTYPES.get(str(hf.get("dtype", hf.get("torch_dtype", "float32"))), "float32")
    fields["dtype"] = fields["param_dtype"] = stored
    recorded = hf.get("phd_jax") or {}
    unknown = sorted(set(recorded) - set(PHD_FIELDS))
    if unknown:
        raise ConfigError(f"{where}.phd_jax has unknown field(s) {unknown}; allowed: {', '.join(PHD_FIELDS)}")
    fields.update(recorded)
    for name in overrides:
        if name in _ARCH_FIELDS:
            fail(
                name,
                overrides[name],
                f"is read from the checkpoint ({fields[name]!r}): it shapes "
                f"the weights; overridable fields: {', '.join(PHD_FIELDS)}",
                ConfigError,
            )
        if name not in PHD_FIELDS:
            fail(name, overrides[name], f"not a ModelConfig field; overridable: {', '.join(PHD_FIELDS)}", ConfigError)
    fields.update(overrides)
    try:
        return ModelConfig(**fields)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


def config_to_hf(cfg: ModelConfig) -> dict:
    """A Llama `config.json` dict for `cfg`, its PHD fields under `"phd_jax"`."""
    if cfg.qk_norm:
        fail(
            "ModelConfig.qk_norm",
            True,
            "Llama has no QK-norm; only qk_norm=False can be saved as a Llama checkpoint",
            ConfigError,
        )
    return {
        "architectures": list(ARCHITECTURES),
        "model_type": "llama",
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
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "pretraining_tp": 1,
        "dtype": cfg.param_dtype,
        "initializer_range": cfg.init_std,
        "use_cache": True,
        "phd_jax": {f: getattr(cfg, f) for f in PHD_FIELDS},
    }


# ---------------------------------------------------------------------------
# parameter names and layouts
# ---------------------------------------------------------------------------


def _layer_map(cfg: ModelConfig):
    """(our path inside a layer, HF name, HF shape, ours -> HF, HF -> ours)."""
    d, h, kvh, hd, f = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim

    def proj(heads):  # [D, heads, hd] <-> [heads*hd, D]
        return ((heads * hd, d), lambda w: w.reshape(d, heads * hd).T, lambda w: w.T.reshape(d, heads, hd))

    def lin(n_in, n_out):  # [in, out] <-> [out, in]
        return ((n_out, n_in), lambda w: w.T, lambda w: w.T)

    same = lambda n: ((n,), lambda w: w, lambda w: w)  # noqa: E731
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
        (("attention_norm", "scale"), "input_layernorm.weight", same(d)),
        (("mlp_norm", "scale"), "post_attention_layernorm.weight", same(d)),
    ]
    return [(path, name, shape, to_hf, from_hf) for path, name, (shape, to_hf, from_hf) in table]


def _global_map(cfg: ModelConfig):
    out = [
        (("embed", "embedding"), "model.embed_tokens.weight", (cfg.vocab_size, cfg.d_model), lambda w: w, lambda w: w),
        (("final_norm", "scale"), "model.norm.weight", (cfg.d_model,), lambda w: w, lambda w: w),
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


def hf_state_dict(params, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """Our parameter pytree as HF Llama tensors (numpy, in `cfg.param_dtype`)."""
    import jax

    params = jax.device_get(params)
    dt = np.dtype(cfg.weight_dtype)
    out = {}
    for path, name, shape, to_hf, _ in _global_map(cfg):
        out[name] = _checked(np.asarray(to_hf(np.asarray(_get(params, path)))), shape, name, "params")
    for i in range(cfg.num_layers):
        layer = jax.tree.map(lambda x: x[i], params["layers"]) if cfg.scan_layers else params[f"layers_{i}"]
        for path, name, shape, to_hf, _ in _layer_map(cfg):
            full = f"model.layers.{i}.{name}"
            out[full] = _checked(np.asarray(to_hf(np.asarray(_get(layer, path)))), shape, full, "params")
    return {k: np.ascontiguousarray(v.astype(dt)) for k, v in out.items()}


def _checked(x, shape, name, where):
    if tuple(x.shape) != tuple(shape):
        raise ConfigError(f"{where}: tensor {name!r} has shape {tuple(x.shape)}, but the config needs {tuple(shape)}")
    return x


# ---------------------------------------------------------------------------
# load
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def _safe_open(file: str):
    """`safetensors.safe_open(file)` whose failures (a truncated download, a file that is not
    safetensors) are a ConfigError naming the file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(file, framework="np") as f:
            yield f
    except SafetensorError as e:
        raise ConfigError(
            f"{file} is not a readable safetensors file ({str(e).strip() or type(e).__name__}): it may be "
            f"truncated (an interrupted download or copy); download or write it again"
        ) from None


def _weight_files(path: str) -> dict[str, str]:
    """tensor name -> safetensors file, from the index (sharded) or the single file."""
    index = os.path.join(path, INDEX_FILE)
    if os.path.isfile(index):
        weight_map = _read_json(index, "safetensors index").get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ConfigError(f"{index} has no 'weight_map'")
        missing = sorted({f for f in weight_map.values() if not os.path.isfile(os.path.join(path, f))})
        if missing:
            raise FileNotFoundError(f"{index} lists shard(s) that are missing: {', '.join(missing)} (in {path})")
        return {k: os.path.join(path, f) for k, f in weight_map.items()}
    single = os.path.join(path, WEIGHTS_FILE)
    if not os.path.isfile(single):
        found = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
        raise FileNotFoundError(
            f"{path} has neither {WEIGHTS_FILE} nor {INDEX_FILE}"
            + (f" (found {found}, but no index to say what they hold)" if found else "")
        )
    with _safe_open(single) as f:
        return dict.fromkeys(f.keys(), single)


def load_hf_llama(path: str, **overrides):
    """Read a local Llama checkpoint directory; return `(ModelConfig, params)`.

    `overrides` set PHD and inference fields (`variant="phd", repeat=2`,
    `window`, `chunk`, `dtype`, `param_dtype`, `attention`, `max_seq_len`, ...).
    Weights are cast to `param_dtype` (default: the checkpoint's dtype). Nothing is
    downloaded; torch is not needed.
    """
    import jax
    import jax.numpy as jnp

    path = os.fspath(path)
    if paths.is_remote(path):  # gs://...: safetensors reads local files, so a staged copy
        if not paths.isdir(path):
            raise FileNotFoundError(f"Hugging Face checkpoint directory {path} does not exist")
        with paths.staged(path, names=lambda name: name.endswith((".json", ".safetensors"))) as local:
            return load_hf_llama(local, **overrides)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"Hugging Face checkpoint directory {path} does not exist")
    cfg = config_from_hf(
        _read_json(os.path.join(path, CONFIG_FILE), "Hugging Face config"), os.path.join(path, CONFIG_FILE), **overrides
    )
    files = _weight_files(path)
    expected = {name: (path_, shape, from_hf, None) for path_, name, shape, _, from_hf in _global_map(cfg)}
    for i in range(cfg.num_layers):
        for path_, name, shape, _, from_hf in _layer_map(cfg):
            expected[f"model.layers.{i}.{name}"] = (path_, shape, from_hf, i)
    missing = [n for n in expected if n not in files]
    if missing:
        raise ConfigError(
            f"{path}: the checkpoint lacks tensor(s) {', '.join(missing[:5])}"
            + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        )
    ignorable = re.compile(r".*rotary_emb\.inv_freq$|^lm_head\.weight$")  # lm_head of a tied model
    extra = sorted(n for n in files if n not in expected and not ignorable.match(n))
    if extra:
        raise ConfigError(
            f"{path}: unexpected tensor(s) {', '.join(extra[:5])} (biases or other "
            "weights phd_jax's Llama does not have)"
        )

    dt = np.dtype(cfg.weight_dtype)
    params: dict = {}
    stacked: dict = {}
    by_file: dict[str, list[str]] = {}
    for name in expected:
        by_file.setdefault(files[name], []).append(name)
    for file, names in by_file.items():
        with _safe_open(file) as f:
            for name in names:
                path_, shape, from_hf, layer = expected[name]
                x = from_hf(_checked(f.get_tensor(name), shape, name, file)).astype(dt)
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
    return cfg, jax.tree.map(jnp.asarray, params)


# ---------------------------------------------------------------------------
# save
# ---------------------------------------------------------------------------


def _parse_size(size) -> int:
    if isinstance(size, int) and size > 0:
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B)?\s*", str(size), re.I)
    if not m:
        fail("max_shard_size", size, "an int number of bytes > 0 or a string like '500MB' / '2GB'")
    unit = (m[2] or "B").upper()
    mult = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}[unit]
    return max(1, int(float(m[1]) * mult))


def save_hf_llama(
    params,
    cfg: ModelConfig,
    path: str,
    *,
    max_shard_size=None,
    overwrite: bool = False,
    tokenizer_dir: str | None = None,
) -> str:
    """Write `params` as a Llama checkpoint (`config.json` + safetensors) in directory `path`.

    `max_shard_size` (bytes or '500MB') splits the weights into shards with an index
    file. Refuses a directory that already holds a checkpoint unless `overwrite=True`.
    `tokenizer_dir`: copy `tokenizer.json` / `tokenizer_config.json` from there.
    Everything is written to a temporary directory first, so a failure leaves
    `path` as it was.
    """
    from safetensors.numpy import save_file

    path = os.fspath(path)
    hf_config = config_to_hf(cfg)
    tensors = hf_state_dict(params, cfg)  # checks every shape before anything is written
    if os.path.exists(path) and not os.path.isdir(path):
        fail("path", path, "exists and is not a directory")
    old = [
        f
        for f in (os.listdir(path) if os.path.isdir(path) else [])
        if f in (CONFIG_FILE, INDEX_FILE) or f.endswith(".safetensors")
    ]
    if old and not overwrite:
        fail(
            "path",
            path,
            f"already holds a checkpoint ({', '.join(sorted(old))}); pass overwrite=True or choose an empty directory",
            FileExistsError,
        )

    names = list(tensors)
    shards = [names]
    if max_shard_size is not None:
        limit, shards, size = _parse_size(max_shard_size), [[]], 0
        for n in names:
            if shards[-1] and size + tensors[n].nbytes > limit:
                shards.append([])
                size = 0
            shards[-1].append(n)
            size += tensors[n].nbytes
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".hf-save-", dir=parent)
    try:
        meta = {"format": "pt"}  # what transformers expects in the safetensors metadata
        if len(shards) == 1:
            save_file({n: tensors[n] for n in names}, os.path.join(tmp, WEIGHTS_FILE), metadata=meta)
        else:
            weight_map = {}
            for i, shard in enumerate(shards):
                fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                save_file({n: tensors[n] for n in shard}, os.path.join(tmp, fname), metadata=meta)
                weight_map.update(dict.fromkeys(shard, fname))
            with open(os.path.join(tmp, INDEX_FILE), "w") as f:
                json.dump(
                    {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())}, "weight_map": weight_map},
                    f,
                    indent=2,
                )
        with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
            json.dump(hf_config, f, indent=2)
        if tokenizer_dir is not None:
            for fname in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
                if os.path.isfile(os.path.join(tokenizer_dir, fname)):
                    shutil.copy(os.path.join(tokenizer_dir, fname), tmp)
        os.makedirs(path, exist_ok=True)
        for f in old:
            os.remove(os.path.join(path, f))
        for f in os.listdir(tmp):
            os.replace(os.path.join(tmp, f), os.path.join(path, f))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
