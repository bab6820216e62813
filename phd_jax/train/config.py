"""Run configs: the common defaults (`base_config`), validation, and the ModelConfig they describe.

Every check runs before any work (no compile, nothing written) and raises a `ConfigError`
whose message names the key (`config.mesh.fsdp=3 is invalid: ...`). Command-line spelling:
`0` means "none" for `model.window` and `model.chunk`; `model.vocab_size=0` means "the
tokenizer's vocabulary padded to a multiple of VOCAB_MULTIPLE".
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
from typing import Literal, get_args

import ml_collections

from phd_jax import axes, paths
from phd_jax.axes import MESH_AXES
from phd_jax.config import ModelConfig, has_window, is_chunked
from phd_jax.data import check_vocab_size, default_data_config, make_tokenizer, padded_vocab_size
from phd_jax.data.tokenizers import VOCAB_MULTIPLE
from phd_jax.errors import ConfigError, ConfigTypeError, as_bool, as_float, as_int, is_int, one_of

# The `model` section has ModelConfig's fields (and its rules: `model_config` builds one). Its own
# defaults, where they differ from ModelConfig's: the quick start's smaller model (1,033,344
# parameters with the byte tokenizer), and the command line's spellings, which have no None.
RUN_MODEL_DEFAULTS = {
    "vocab_size": 0,  # the tokenizer's vocabulary padded to a multiple of VOCAB_MULTIPLE
    "d_model": 128,
    "head_dim": 32,
    "mlp_dim": 512,
    "max_seq_len": 256,
    "chunk": 0,  # C; 0 = none (phd_cswa needs one)
    "position_mode": "shared",  # for every variant (ModelConfig's None means "flat" for naive)
}

SCHEDULES = ("cosine", "linear", "constant")

# What `init_from` brings into a new run: "params" the weights only (a new optimisation from
# step 0), "full" the whole TrainState and the data position (phd_jax.train.continuation).
InitState = Literal["params", "full"]
INIT_STATES: tuple[InitState, ...] = get_args(InitState)

# Logical axis -> mesh axes, as in MaxText. Parameters carry the names of
# `phd_jax.param_logical_axes`; activations use the `activation_*` names (model.py).
DEFAULT_RULES = (
    (axes.BATCH, (axes.DATA, axes.FSDP)),
    (axes.ACTIVATION_BATCH, (axes.DATA, axes.FSDP)),
    (axes.ACTIVATION_LENGTH, None),
    (axes.ACTIVATION_EMBED, None),
    (axes.ACTIVATION_HEADS, axes.TENSOR),
    (axes.ACTIVATION_KV_HEADS, axes.TENSOR),
    (axes.ACTIVATION_MLP, axes.TENSOR),
    (axes.ACTIVATION_VOCAB, axes.TENSOR),
    (axes.EMBED, axes.FSDP),
    (axes.VOCAB, axes.TENSOR),
    (axes.MLP, axes.TENSOR),
    (axes.HEADS, axes.TENSOR),
    (axes.KV_HEADS, axes.TENSOR),
    (axes.HEAD_DIM, None),
    (axes.LAYERS, None),
)


def base_config() -> ml_collections.ConfigDict:
    """The defaults every config file starts from (each file changes only what differs)."""
    c = ml_collections.ConfigDict()
    model = {f.name: RUN_MODEL_DEFAULTS.get(f.name, f.default) for f in dataclasses.fields(ModelConfig)}
    # qk_norm takes a name or, as in phd_jax <= 0.2, a bool (config files, `--config.model.qk_norm=True`):
    # an untyped field, so ml_collections' type check lets both through to ModelConfig's.
    model["qk_norm"] = ml_collections.FieldReference(model["qk_norm"], field_type=object)
    c.model = ml_collections.ConfigDict(model)

    # Data: phd_jax.data validates this section.
    c.data = default_data_config()
    c.val_fraction = 0.05
    c.seq_len = 128
    c.batch_size = 16  # global batch (sequences per step, all devices)
    c.eval_batches = 8

    # Optimisation: AdamW, warmup then `schedule` down to min_lr_ratio * learning_rate.
    c.seed = 0
    c.num_steps = 300
    c.learning_rate = 3e-3
    c.warmup_steps = 30
    c.schedule = "cosine"
    c.min_lr_ratio = 0.1
    c.adam_b1 = 0.9
    c.adam_b2 = 0.95
    c.adam_eps = 1e-8
    c.weight_decay = 0.1
    c.weight_decay_exclude = "*norm,embed,bias"  # fnmatch patterns on parameter path parts: no decay
    c.grad_clip = 1.0  # global norm; 0 = off
    c.grad_accum_steps = 1
    c.skip_nonfinite = False  # True: skip a non-finite update instead of stopping

    # Parallelism: mesh axis sizes (one may be -1: the remaining devices).
    mesh = c.mesh = ml_collections.ConfigDict()
    mesh.data = -1
    mesh.fsdp = 1
    mesh.tensor = 1
    c.logical_axis_rules = [list(r) for r in DEFAULT_RULES]

    # Checkpoints and reporting.
    c.checkpoint_every = 100
    c.keep_checkpoints = 3
    c.async_checkpointing = True
    c.init_from = ""  # a workdir / checkpoint step dir, or hf:PATH (weights only)
    c.init_state = "params"  # what init_from brings: INIT_STATES ("full": continue that run)
    # Steps to trace with jax.profiler into WORKDIR/profile: "START,END" or (START, END); None/"" = off.
    c.profile_steps = ml_collections.config_dict.placeholder(object)
    c.log_every = 50
    c.eval_every = 100
    c.peak_tflops = 0.0  # per device, for MFU; 0 = measure a matmul (CPU) once
    c.compilation_cache = "~/.cache/phd_jax/jax_cache"  # "" disables
    c.sample_prompt = "ROMEO.\n"
    c.sample_tokens = 200
    return c


def paper_config(num_layers, d_model, mlp_dim, num_heads, num_kv_heads, head_dim, learning_rate, tokens):
    """What configs/paper_550m.py and paper_1b.py share (their docstrings say which values
    are the paper's and which are our choices)."""
    c = base_config()
    m = c.model
    m.num_layers, m.d_model, m.mlp_dim = num_layers, d_model, mlp_dim
    m.num_heads, m.num_kv_heads, m.head_dim = num_heads, num_kv_heads, head_dim
    m.vocab_size, m.tie_embeddings, m.max_seq_len = 100352, True, 4096
    m.norm_position, m.qk_norm = "post", "projection"  # the OLMo2 block the paper builds on
    m.dtype, m.param_dtype, m.remat, m.block_q, m.block_kv = "bfloat16", "float32", "dots", 512, 512
    c.seq_len, c.batch_size = 2048, 512
    c.num_steps = tokens // (c.seq_len * c.batch_size)
    c.learning_rate, c.warmup_steps, c.min_lr_ratio = learning_rate, 2000, 0.1
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
    c.log_every, c.eval_every, c.eval_batches = 100, 2000, 32
    c.checkpoint_every, c.keep_checkpoints = 2000, 3
    c.sample_tokens = 100
    return c


def apply_model_name(config: ml_collections.ConfigDict, name: str | None):
    """Set variant / repeat / window / chunk from a paper name (`PHD-SWA-3-16-inf`), if given."""
    if not name:
        return config
    try:
        cfg = ModelConfig.from_name(name)
    except ValueError:
        raise ConfigError(
            f"config argument {name!r} is invalid: allowed: vanilla, naive-K, PHD-K, "
            f"PHD-SWA-K-W-inf, PHD-CSWA-K-W-C (e.g. configs/default.py:PHD-SWA-3-16-inf)"
        ) from None
    config.model.variant, config.model.repeat = cfg.variant, cfg.repeat
    config.model.window, config.model.chunk = cfg.window, cfg.chunk or 0
    return config


# ---- validation ------------------------------------------------------------------------------


def _check_keys(section, reference, prefix: str):
    for key in section.keys():
        if key not in reference:
            close = difflib.get_close_matches(key, list(reference.keys()), n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise ConfigError(f"{prefix}{key} is not a config key{hint}")


def _model_fields(config, tokenizer) -> dict:
    """The `model` section as ModelConfig's keyword arguments: the command line's spellings
    translated (0 = none, vocab_size 0 = the tokenizer's), then ModelConfig checks every field
    and its errors come through renamed to the run config's keys (`config.model.window`)."""
    m = dict(config.model)
    key = "config.model."
    for f in ("window", "chunk", "vocab_size"):
        m[f] = as_int(key + f, m[f], 0, error=ConfigError)
    variant = m["variant"]
    if m["window"] and not has_window(variant):
        raise ConfigError(
            f"{key}window={m['window']} is not used by variant {variant!r} but "
            f"left at a non-zero value: set --{key}window=0 (or pick phd_swa / phd_cswa)"
        )
    if m["chunk"] and not is_chunked(variant):
        raise ConfigError(
            f"{key}chunk={m['chunk']} is not used by variant {variant!r} but "
            f"left at a non-zero value: set --{key}chunk=0 (or pick phd_cswa)"
        )
    if is_chunked(variant) and not m["chunk"]:
        raise ConfigError(f"{key}chunk=0 is invalid: phd_cswa needs a chunk C >= 1")
    m["chunk"] = m["chunk"] or None
    if tokenizer is not None:
        if m["vocab_size"] == 0:
            m["vocab_size"] = padded_vocab_size(tokenizer, VOCAB_MULTIPLE)
        else:
            check_vocab_size(m["vocab_size"], tokenizer)
    elif m["vocab_size"] == 0:
        raise ConfigError(f"{key}vocab_size=0 needs the tokenizer to set it")
    try:
        return dict(ModelConfig(**m).__dict__)
    except ValueError as e:
        error = ConfigTypeError if isinstance(e, TypeError) else ConfigError
        raise error(str(e).replace("ModelConfig.", key)) from None


def model_config(config, tokenizer=None) -> ModelConfig:
    """The `model` section as a validated ModelConfig (vocab_size 0 -> the tokenizer's, padded)."""
    if tokenizer is None and config.model.vocab_size == 0:
        spec = config.data.tokenizer if "data" in config and "tokenizer" in config.data else "byte"
        tokenizer = make_tokenizer(spec)
    return ModelConfig(**_model_fields(config, tokenizer))


def mesh_shape(config, num_devices: int) -> tuple[int, int, int]:
    """(data, fsdp, tensor) sizes with a -1 resolved; checked against the device count."""
    sizes = {}
    for a in MESH_AXES:
        v = as_int(f"config.mesh.{a}", config.mesh[a], -1, error=ConfigError)
        if v == 0:
            raise ConfigError(f"config.mesh.{a}=0 is invalid: must be >= 1, or -1 for the remaining devices")
        sizes[a] = v
    free = [a for a in MESH_AXES if sizes[a] == -1]
    if len(free) > 1:
        raise ConfigError(
            f"config.mesh.{free[1]}=-1 is invalid: only one mesh axis may be -1 (config.mesh.{free[0]} already is)"
        )
    fixed = math.prod(v for v in sizes.values() if v != -1)
    if free:
        if num_devices % fixed:
            raise ConfigError(
                f"config.mesh.{free[0]}=-1 is invalid: the other axes use {fixed} devices, "
                f"which does not divide the {num_devices} devices"
            )
        sizes[free[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise ConfigError(
            f"config.mesh={sizes} is invalid: data*fsdp*tensor={fixed} must equal the "
            f"{num_devices} devices (set one axis to -1 for the remaining devices)"
        )
    return tuple(sizes[a] for a in MESH_AXES)


def validate(config, num_devices: int, tokenizer=None, process_count: int = 1) -> ModelConfig:
    """Check the whole run config; return its ModelConfig. Raises ConfigError naming the key."""
    base = base_config()
    _check_keys(config, base, "config.")
    for section in ("model", "mesh"):
        if not isinstance(config[section], ml_collections.ConfigDict):
            raise ConfigError(f"config.{section} must be a section (ConfigDict), got {type(config[section]).__name__}")
        _check_keys(config[section], base[section], f"config.{section}.")
    cfg = model_config(config, tokenizer)
    ints = dict(
        seq_len=1,
        batch_size=1,
        num_steps=1,
        log_every=1,
        eval_every=1,
        eval_batches=1,
        warmup_steps=0,
        grad_accum_steps=1,
        checkpoint_every=1,
        keep_checkpoints=1,
        sample_tokens=0,
        seed=0,
    )
    for key, low in ints.items():
        as_int(f"config.{key}", config[key], low, error=ConfigError)
    for key, lo, hi in (
        ("learning_rate", 0.0, None),
        ("weight_decay", 0.0, None),
        ("grad_clip", 0.0, None),
        ("min_lr_ratio", 0.0, 1.0),
        ("adam_b1", 0.0, 1.0),
        ("adam_b2", 0.0, 1.0),
        ("adam_eps", 0.0, None),
        ("peak_tflops", 0.0, None),
    ):
        as_float(f"config.{key}", config[key], lo, hi, error=ConfigError)
    as_float("config.val_fraction", config.val_fraction, 0.0, 1.0, low_open=True, high_open=True, error=ConfigError)
    for key in ("skip_nonfinite", "async_checkpointing"):
        as_bool(f"config.{key}", config[key], error=ConfigError)
    one_of("config.schedule", config.schedule, SCHEDULES, error=ConfigError)
    for key in ("init_from", "compilation_cache", "sample_prompt", "weight_decay_exclude"):
        if not isinstance(config[key], str):
            raise ConfigError(f"config.{key}={config[key]!r} is invalid: must be a string")
    check_init(config)
    profile_steps(config)
    if config.seq_len > cfg.max_seq_len:
        raise ConfigError(
            f"config.seq_len={config.seq_len} is invalid: exceeds config.model.max_seq_len={cfg.max_seq_len}"
        )
    data, fsdp, _ = mesh_shape(config, num_devices)
    dp = data * fsdp
    if config.batch_size % process_count:
        raise ConfigError(
            f"config.batch_size={config.batch_size} is invalid: must be a multiple of the {process_count} processes"
        )
    if config.batch_size % config.grad_accum_steps:
        raise ConfigError(
            f"config.batch_size={config.batch_size} is invalid: must be a multiple of "
            f"config.grad_accum_steps={config.grad_accum_steps}"
        )
    micro = config.batch_size // config.grad_accum_steps
    if micro % dp:
        raise ConfigError(
            f"config.batch_size={config.batch_size} is invalid: each of the "
            f"{config.grad_accum_steps} microbatches ({micro} sequences) must be a multiple of "
            f"the data-parallel size mesh.data*mesh.fsdp={dp}"
        )
    if config.sample_tokens:
        prompt = (
            len(config.sample_prompt.encode("utf-8"))
            if tokenizer is None
            else len(tokenizer.encode(config.sample_prompt))
        )
        if prompt < 1:
            raise ConfigError(
                "config.sample_prompt='' is invalid: sampling needs at least one token (or set config.sample_tokens=0)"
            )
        if prompt + config.sample_tokens > cfg.max_seq_len:
            raise ConfigError(
                f"config.sample_tokens={config.sample_tokens} is invalid: the prompt "
                f"({prompt} tokens) plus the sample must fit config.model.max_seq_len="
                f"{cfg.max_seq_len}"
            )
    _check_rules(config.logical_axis_rules)
    return cfg


def check_init(config) -> None:
    """`init_from` and `init_state` agree (run before anything reads the source)."""
    one_of("config.init_state", config.get("init_state", "params"), INIT_STATES, error=ConfigError)
    if config.get("init_state", "params") == "full" and (
        not config.init_from or str(config.init_from).startswith("hf:")
    ):
        raise ConfigError(
            f"config.init_state='full' is invalid with config.init_from={config.init_from!r}: it continues "
            f"a phd_jax run, so init_from must name its WORKDIR or WORKDIR/checkpoints/STEP (a Hugging Face "
            f"checkpoint has no optimizer state: use config.init_state='params')"
        )


def profile_steps(config) -> tuple[int, int] | None:
    """`config.profile_steps` as (START, END), the first and last step traced, or None (off).
    Accepts "START,END" (the command line's spelling), a tuple or list of two ints, None or ""."""
    value = config.get("profile_steps")
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    parts = value.split(",") if isinstance(value, str) else value
    try:
        if len(parts) != 2:
            raise ValueError
        start, end = (_positive_int(p) for p in parts)
    except (TypeError, ValueError):
        raise ConfigError(
            f"config.profile_steps={value!r} is invalid: must be START,END (steps >= 1, START <= END, "
            f"e.g. --config.profile_steps=10,12), or empty for no profile"
        ) from None
    if start > end:
        raise ConfigError(f"config.profile_steps={value!r} is invalid: START={start} is after END={end}")
    return start, end


def _positive_int(value) -> int:
    value = int(value.strip()) if isinstance(value, str) else value
    if not is_int(value) or int(value) < 1:
        raise ValueError(value)
    return int(value)


def _check_rules(rules):
    for i, rule in enumerate(rules):
        ok = isinstance(rule, (list, tuple)) and len(rule) == 2 and isinstance(rule[0], str)
        targets = rule[1] if ok else None
        targets = () if targets is None else (targets,) if isinstance(targets, str) else targets
        if not ok or not all(a in MESH_AXES for a in targets):
            raise ConfigError(
                f"config.logical_axis_rules[{i}]={rule!r} is invalid: must be "
                f"(logical_name, mesh axes) with mesh axes from {', '.join(MESH_AXES)} or None"
            )


def logical_rules(config) -> tuple:
    """The rules as a tuple of (name, None | str | tuple of str), what flax expects."""
    out = []
    for name, targets in config.logical_axis_rules:
        out.append((name, tuple(targets) if isinstance(targets, (list, tuple)) else targets))
    return tuple(out)


# ---- the workdir's JSON files ---------------------------------------------------------------


def to_json(config) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list)


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
    """The full run config a workdir was trained with (`WORKDIR/config.json`)."""
    path = os.path.join(workdir, "config.json")
    if not paths.isfile(path):
        raise ConfigError(f"workdir={workdir!r} is invalid: no config.json (not a phd_jax training run)")
    return ml_collections.ConfigDict(json.loads(paths.read_text(path)))
