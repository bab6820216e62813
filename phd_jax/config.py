"""ModelConfig: one validated, hashable description of a PHD model.

Hashable (frozen) so that it can be a static argument of `jax.jit`; every
derived quantity the masks, prefill and decode need lives here as a property,
so the rest of the library never re-derives K-1, ceil(W/(K-1)) and friends.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Literal, get_args

import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from phd_jax.errors import ConfigError, ConfigTypeError, as_bool, as_float, as_int, fail, is_traced, one_of

# Tokens one sequence may put through the layers in a static layout (forward: T*K;
# prefill: the originals plus the tail's hidden copies). The block patterns no longer need
# [N, N] memory (T = 65536, K = 4 builds in 31 MiB) and the blocksparse kernel's compile
# time and memory no longer grow with N (benchmarks/long_context.py), but the `dense`
# backend's mask still does not scale past this.
MAX_TOKENS_PER_SEQUENCE = 65536

# The splash backend's tiles (block_q, block_kv) must be multiples of this (the TPU's lane width);
# `ModelConfig` checks it for attention="splash", `phd_jax.attention.splash` runs them.
SPLASH_BLOCK_MULTIPLE = 128

# ---- the string-valued choices: one definition each (strings, so configs and JSON keep working)
Variant = Literal["vanilla", "naive", "phd", "phd_swa", "phd_cswa"]
Backend = Literal["auto", "dense", "blocksparse", "splash"]  # attention backends
PositionMode = Literal["shared", "flat"]
DType = Literal["float32", "bfloat16", "float16"]
RematPolicy = Literal["none", "full", "dots"]
Mode = Literal["full", "extend"]  # the model's mode (`model.Transformer.mode`)
# Block options (docs/architecture.md, "Block options"): one field per feature, so they compose.
NormPosition = Literal["pre", "post"]  # RMSNorm before each sublayer (Llama) or on its output (OLMo2)
QKNorm = Literal["none", "head", "projection"]  # none; per head (Qwen3); whole projection (OLMo2)
RopeScaling = Literal["none", "llama3"]  # rotary frequencies as is, or Llama 3.1's rescaling

VARIANTS: tuple[Variant, ...] = get_args(Variant)
BACKENDS: tuple[Backend, ...] = get_args(Backend)
POSITION_MODES: tuple[PositionMode, ...] = get_args(PositionMode)
DTYPES: tuple[DType, ...] = get_args(DType)
REMAT_POLICIES: tuple[RematPolicy, ...] = get_args(RematPolicy)
MODES: tuple[Mode, ...] = get_args(Mode)
NORM_POSITIONS: tuple[NormPosition, ...] = get_args(NormPosition)
QK_NORMS: tuple[QKNorm, ...] = get_args(QKNorm)
ROPE_SCALINGS: tuple[RopeScaling, ...] = get_args(RopeScaling)

# `qk_norm` was a bool in phd_jax 0.2 and earlier: True meant the per-head norm. Still accepted everywhere
# (constructor, model_config.json, run configs, "phd_jax" blocks) and read as these names.
QK_NORM_BOOLS: dict[bool, QKNorm] = {True: "head", False: "none"}

PHD_VARIANTS: tuple[Variant, ...] = ("phd", "phd_swa", "phd_cswa")

# Fields that shape the parameters (PHD adds none): `init_params` and `check_params` key on them.
PARAM_FIELDS = (
    "vocab_size",
    "num_layers",
    "d_model",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "mlp_dim",
    "tie_embeddings",
    "norm_position",
    "qk_norm",
    "qkv_bias",
    "dtype",
    "param_dtype",
    "scan_layers",
    "init_std",
)


# The model's architecture: the fields a checkpoint fixes (shapes, block options, rotary
# frequencies, norm epsilon), as opposed to PHD's fields and how the model is run (dtypes,
# kernels, layer stacking). `phd_jax.interop` reads these from a Hugging Face config.
ARCHITECTURE_FIELDS = (
    *("vocab_size", "num_layers", "d_model", "num_heads", "num_kv_heads", "head_dim", "mlp_dim"),
    *("rope_theta", "norm_eps", "tie_embeddings", "norm_position", "qk_norm", "qkv_bias", "rope_scaling"),
    *("rope_factor", "rope_low_freq_factor", "rope_high_freq_factor", "rope_original_max_len"),
)


def as_qk_norm(name: str, value, error=ConfigError) -> QKNorm:
    """`value` as one of `QK_NORMS`; a bool (the spelling of phd_jax <= 0.2) becomes `QK_NORM_BOOLS[value]`."""
    if isinstance(value, (bool, np.bool_)):
        return QK_NORM_BOOLS[bool(value)]
    if not isinstance(value, str) or value not in QK_NORMS:
        fail(
            name,
            value,
            f"allowed: {', '.join(QK_NORMS)} (or a bool: True = 'head', False = 'none')",
            error if isinstance(value, str) else ConfigTypeError,
        )
    return value


def canonical_field(name: str, value):
    """A saved `ModelConfig` field's value in today's spelling (`qk_norm: true` -> "head"), for
    comparing saved configs with new ones; other fields and values unchanged."""
    if name == "qk_norm" and isinstance(value, (bool, np.bool_)):
        return QK_NORM_BOOLS[bool(value)]
    return value


# ---- the variant predicates: the one definition every module uses ----------------
def has_hidden_tokens(variant: Variant, repeat: int) -> bool:
    """True when copies 1..K-1 are hidden decoding tokens (never cached): PHD with K > 1."""
    return variant in PHD_VARIANTS and repeat > 1


def has_window(variant: Variant) -> bool:
    """True for the variants whose hidden tokens see a sliding window of W earlier ones."""
    return variant in ("phd_swa", "phd_cswa")


def is_chunked(variant: Variant) -> bool:
    """True for the variant whose window is cut at chunks of C positions."""
    return variant == "phd_cswa"


def check_phd_args(variant, repeat, window, chunk, prefix: str = "", error=ValueError) -> tuple:
    """The PHD scheme's own field rules, one field at a time: (variant, K >= 1, W >= 0, C None or
    >= 1) as Python values. `ModelConfig` adds the rules between fields (a window only for
    phd_swa / phd_cswa, ...); `masks.attention_mask` takes any combination."""
    variant = one_of(prefix + "variant", variant, VARIANTS, error=error)
    repeat = as_int(prefix + "repeat", repeat, 1, error=error)
    window = as_int(prefix + "window", window, 0, error=error)
    chunk = None if chunk is None else as_int(prefix + "chunk", chunk, 1, error=error)
    return variant, repeat, window, chunk


_INT_FIELDS = (
    "vocab_size",
    "num_layers",
    "d_model",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "mlp_dim",
    "max_seq_len",
    "block_q",
    "block_kv",
    "rope_original_max_len",
)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A decoder-only transformer (Llama, OLMo2, Qwen2, Qwen3 blocks) plus the PHD token-repetition scheme.

    Block options, one field per feature (they compose; defaults are the Llama block of
    phd_jax <= 0.2, bit for bit). `phd_jax.interop` maps Hugging Face architecture names
    onto them (Llama: the defaults, plus `rope_scaling="llama3"` for Llama 3.1+; OLMo2:
    `norm_position="post"`, `qk_norm="projection"`; Qwen2: `qkv_bias=True`; Qwen3:
    `qk_norm="head"`):
    - `norm_position`: "pre" (`x + attn(norm(x))`, `h + mlp(norm(h))`) or "post" (OLMo2:
      `x + norm(attn(x))`, `h + norm(mlp(h))`, no input norm); the final norm stays either way;
    - `qk_norm`: "none"; "head" (RMSNorm over each head's `head_dim` features of queries and
      keys, before RoPE: Qwen3); "projection" (RMSNorm over the whole query projection,
      `num_heads*head_dim` features, and the whole key projection, before RoPE: OLMo2).
      True / False (the bool of phd_jax <= 0.2) are read as "head" / "none";
    - `qkv_bias`: biases on the query, key and value projections (Qwen2; never on the output);
    - `rope_scaling`: "none", or "llama3" (Llama 3.1's frequency rescaling, transformers'
      `_compute_llama3_parameters`, with `rope_factor`, `rope_low_freq_factor`,
      `rope_high_freq_factor`, `rope_original_max_len`; those four are used only then).

    PHD fields (docs/spec.md section 1): `variant`, `repeat` (K), `window` (W, counted
    in hidden decoding tokens), `chunk` (C, counted in original positions,
    `phd_cswa` only), `position_mode` ("shared": every copy of position n has
    rotary position n; "flat": copy s has n*K + s; default: flat for `naive`,
    whose definition is the literal repeated sequence, shared otherwise).

    Every field is checked on construction (`phd_jax.errors`): numpy / JAX scalars
    become Python numbers (so equal configs hash equally), booleans must be bools,
    floats finite; a bad value raises a `ConfigError` (a `ValueError`; also a
    `TypeError` for a wrong type) naming the field.
    """

    vocab_size: int = 256
    num_layers: int = 4
    d_model: int = 256
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 64
    mlp_dim: int = 1024
    max_seq_len: int = 1024
    variant: Variant = "vanilla"
    repeat: int = 1
    window: int = 0
    chunk: int | None = None
    position_mode: PositionMode | None = None  # None: "flat" for naive (the literal repeated sequence), else "shared"
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = True
    # Block options (class docstring): defaults are the Llama block.
    norm_position: NormPosition = "pre"
    qk_norm: QKNorm = "none"
    qkv_bias: bool = False
    rope_scaling: RopeScaling = "none"
    rope_factor: float = 8.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_len: int = 8192
    dtype: DType = "float32"
    param_dtype: DType = "float32"
    attention: Backend = "auto"
    # Tile sizes of the static block-sparse pattern (splash needs multiples of 128).
    block_q: int = 128
    block_kv: int = 128
    scan_layers: bool = True
    remat: RematPolicy = "none"
    init_std: float = 0.02

    def __post_init__(self):
        def put(field, value):
            object.__setattr__(self, field, value)

        def name(field):
            return f"ModelConfig.{field}"

        for f in _INT_FIELDS:
            put(f, as_int(name(f), getattr(self, f), 1, error=ConfigError))
        for f in ("tie_embeddings", "qkv_bias", "scan_layers"):
            put(f, as_bool(name(f), getattr(self, f), error=ConfigError))
        put("qk_norm", as_qk_norm(name("qk_norm"), self.qk_norm))
        for f in ("dtype", "param_dtype"):
            put(f, one_of(name(f), _dtype_name(getattr(self, f)), DTYPES, error=ConfigError))
        for f, allowed in (
            ("attention", BACKENDS),
            ("remat", REMAT_POLICIES),
            ("norm_position", NORM_POSITIONS),
            ("rope_scaling", ROPE_SCALINGS),
        ):
            one_of(name(f), getattr(self, f), allowed, error=ConfigError)
        phd = check_phd_args(self.variant, self.repeat, self.window, self.chunk, "ModelConfig.", ConfigError)
        for f, value in zip(("variant", "repeat", "window", "chunk"), phd):
            put(f, value)
        if self.position_mode is None:
            put("position_mode", "flat" if self.variant == "naive" else "shared")
        one_of(name("position_mode"), self.position_mode, POSITION_MODES, error=ConfigError)
        for f in ("rope_theta", "norm_eps", "init_std", "rope_factor", "rope_low_freq_factor"):
            put(f, as_float(name(f), getattr(self, f), 0.0, low_open=True, error=ConfigError))
        put(
            "rope_high_freq_factor",
            as_float(
                name("rope_high_freq_factor"),
                self.rope_high_freq_factor,
                self.rope_low_freq_factor,
                low_open=True,
                error=ConfigError,
            ),
        )
        if self.num_heads % self.num_kv_heads:
            fail(
                name("num_kv_heads"),
                self.num_kv_heads,
                f"must divide num_heads={self.num_heads} (grouped-query attention)",
                ConfigError,
            )
        if self.attention == "splash":
            for f in ("block_q", "block_kv"):
                if getattr(self, f) % SPLASH_BLOCK_MULTIPLE:
                    fail(
                        name(f),
                        getattr(self, f),
                        f"attention='splash' needs block_q and block_kv that are multiples of "
                        f"{SPLASH_BLOCK_MULTIPLE} (got block_q={self.block_q}, block_kv={self.block_kv}); "
                        f"set both, e.g. block_q=block_kv={SPLASH_BLOCK_MULTIPLE}, or use attention='blocksparse'",
                        ConfigError,
                    )
        if self.head_dim % 2:
            fail(name("head_dim"), self.head_dim, "must be even (rotary embeddings rotate pairs)", ConfigError)
        if self.repeat > MAX_TOKENS_PER_SEQUENCE:
            fail(
                name("repeat"),
                self.repeat,
                f"one position alone needs K={self.repeat} tokens per sequence, above the limit "
                f"MAX_TOKENS_PER_SEQUENCE={MAX_TOKENS_PER_SEQUENCE}",
                ConfigError,
            )
        if self.variant == "vanilla" and self.repeat != 1:
            fail(name("repeat"), self.repeat, "variant 'vanilla' needs repeat=1 (use 'phd' for K > 1)", ConfigError)
        if self.window and not has_window(self.variant):
            fail(
                name("window"),
                self.window,
                f"variant {self.variant!r} has no sliding window; use 0, or phd_swa / phd_cswa",
                ConfigError,
            )
        if is_chunked(self.variant):
            if self.chunk is None:
                fail(name("chunk"), None, "phd_cswa needs an integer chunk C >= 1", ConfigError)
        elif self.chunk is not None:
            fail(name("chunk"), self.chunk, f"only phd_cswa is chunked; use None for {self.variant!r}", ConfigError)

    # ---- names -------------------------------------------------------------
    @property
    def name(self) -> str:
        """The paper's name: `vanilla`, `naive-3`, `PHD-3`, `PHD-SWA-3-16-inf`, `PHD-CSWA-3-16-32`."""
        k, w = self.repeat, self.window
        return {
            "vanilla": "vanilla",
            "naive": f"naive-{k}",
            "phd": f"PHD-{k}",
            "phd_swa": f"PHD-SWA-{k}-{w}-inf",
            "phd_cswa": f"PHD-CSWA-{k}-{w}-{self.chunk}",
        }[self.variant]

    @classmethod
    def from_name(cls, name: str, **kwargs) -> ModelConfig:
        """Inverse of `name`: `ModelConfig.from_name("PHD-CSWA-3-16-32", d_model=...)`."""
        patterns = [
            (r"vanilla", lambda m: dict(variant="vanilla")),
            (r"naive-(\d+)", lambda m: dict(variant="naive", repeat=int(m[1]))),
            (r"phd-(\d+)", lambda m: dict(variant="phd", repeat=int(m[1]))),
            (r"phd-swa-(\d+)-(\d+)-inf", lambda m: dict(variant="phd_swa", repeat=int(m[1]), window=int(m[2]))),
            (
                r"phd-cswa-(\d+)-(\d+)-(\d+)",
                lambda m: dict(variant="phd_cswa", repeat=int(m[1]), window=int(m[2]), chunk=int(m[3])),
            ),
        ]
        if not isinstance(name, str):
            fail(
                "ModelConfig.from_name(name)",
                name,
                "must be a model name string such as 'PHD-3' "
                "(vanilla, naive-K, PHD-K, PHD-SWA-K-W-inf, PHD-CSWA-K-W-C)",
                ConfigTypeError,
            )
        for pat, make in patterns:
            m = re.fullmatch(pat, name.strip().lower())
            if m:
                return cls(**{**make(m), **kwargs})
        raise ConfigError(
            f"model name {name!r} is not one of: vanilla, naive-K, PHD-K, PHD-SWA-K-W-inf, PHD-CSWA-K-W-C"
        )

    def replace(self, **kwargs) -> ModelConfig:
        return dataclasses.replace(self, **kwargs)

    # ---- derived PHD quantities -----------------------------------------------
    @property
    def is_phd(self) -> bool:
        """True when the model has hidden decoding tokens that are not cached."""
        return has_hidden_tokens(self.variant, self.repeat)

    @property
    def effective_window(self) -> int:
        """W as the mask uses it (0 for variants without a window, or K = 1)."""
        return self.window if self.is_phd and has_window(self.variant) else 0

    @property
    def effective_chunk(self) -> int | None:
        return self.chunk if is_chunked(self.variant) else None

    @property
    def cached_copies(self) -> int:
        """Copies per position kept in the persistent KV cache: K for naive, else 1."""
        return self.repeat if self.variant == "naive" else 1

    @property
    def window_positions(self) -> int:
        """w = ceil(W / (K-1)): how many positions back one layer's window reaches."""
        return math.ceil(self.effective_window / (self.repeat - 1)) if self.is_phd else 0

    def prefill_tail(self, prompt_len: int, ragged: bool = False) -> int:
        """Positions at the end of a prompt whose hidden copies prefill computes.

        Spec section 5: `L*w + 1` for phd / phd_swa (w = 0 gives 1 for phd);
        for phd_cswa also no further back than the start of the last chunk.
        With `ragged=True` the prompt's true length is only known at run time,
        so the chunk cut becomes the bound `C` (extra positions are masked).
        """
        if not self.is_phd or prompt_len < 1:
            return 0
        tail = self.num_layers * self.window_positions + 1
        if is_chunked(self.variant):
            tail = min(tail, self.chunk if ragged else (prompt_len - 1) % self.chunk + 1)
        return min(tail, prompt_len)

    def cache_shapes(self, batch: int, max_len: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Shapes `[L, B, KVH, slots, D]` of the persistent KV cache's keys (its values alike),
        docs/spec.md section 4: (the originals' cache, `max_len * cached_copies` slots; the window of
        hidden tokens, `effective_window` slots). The one home of the cache-size formula."""
        per_slot = (self.num_layers, batch, self.num_kv_heads), (self.head_dim,)
        originals = per_slot[0] + (max_len * self.cached_copies,) + per_slot[1]
        window = per_slot[0] + (self.effective_window,) + per_slot[1]
        return originals, window

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def weight_dtype(self):
        return jnp.dtype(self.param_dtype)


@functools.lru_cache(maxsize=256)
def param_config(cfg: ModelConfig) -> ModelConfig:
    """`cfg` reduced to the fields that shape the parameters (`PARAM_FIELDS`), others default:
    one compiled init, and one parameter check, serve every variant, K, W and C."""
    return ModelConfig(**{f: getattr(cfg, f) for f in PARAM_FIELDS})


def _dtype_name(value):
    """'bfloat16' for 'bfloat16', jnp.bfloat16 or np.dtype('bfloat16'); anything else unchanged."""
    if isinstance(value, str) or value is None:
        return value
    try:
        return jnp.dtype(value).name
    except TypeError:
        return value


# ---------------------------------------------------------------------------
# Checks of arguments against a ModelConfig
# ---------------------------------------------------------------------------


def check_config(cfg, name: str = "config"):
    """`cfg` itself: a `ModelConfig`, and never a traced value (it is static under jit)."""
    if isinstance(cfg, ModelConfig):
        return cfg
    if is_traced(cfg):
        raise TypeError(
            f"{name} is a traced value: a ModelConfig must be a static argument under "
            f"jax.jit, e.g. jax.jit(phd_jax.forward, static_argnums=1)"
        )
    hint = " (build one with phd_jax.ModelConfig(**d))" if isinstance(cfg, dict) else ""
    raise TypeError(f"{name} must be a phd_jax.ModelConfig, got {type(cfg).__name__}{hint}")


def check_tokens(cfg: ModelConfig, tokens, name: str = "tokens"):
    """Shape and dtype of a token array `[batch, length]`; the id range when concrete.

    Under tracing the ids are unknown: out-of-range ids are then clamped by the model
    (see `Transformer`), and a `checkify` check reports them in the checked mode
    (`phd_jax.checked`).
    """
    if tokens.ndim != 2 or 0 in tokens.shape:
        raise ValueError(f"{name} must have shape [batch, length] with both >= 1, got shape {tuple(tokens.shape)}")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"{name} must be integer token ids, got dtype {tokens.dtype}")
    v = cfg.vocab_size
    if is_traced(tokens):
        bad = jnp.where((tokens < 0) | (tokens >= v), tokens, 0)
        bad = jnp.where(jnp.min(bad) < 0, jnp.min(bad), jnp.max(bad))
        checkify.debug_check(
            jnp.all((tokens >= 0) & (tokens < v)),
            f"{name} contains id {{}}, outside the allowed range [0, vocab_size={v})",
            bad,
        )
        return
    values = np.asarray(tokens)  # concrete; np.min on a jax array inside a trace would stage
    lo, hi = int(values.min()), int(values.max())
    if lo < 0 or hi >= v:
        raise ValueError(f"{name} contains id {lo if lo < 0 else hi}, outside the allowed range [0, vocab_size={v})")


def check_tokens_per_sequence(cfg: ModelConfig, tokens: int, what: str):
    """Refuse a static layout of more than `MAX_TOKENS_PER_SEQUENCE` tokens, before building it."""
    if tokens > MAX_TOKENS_PER_SEQUENCE:
        raise ValueError(
            f"{what} needs {tokens} tokens per sequence through the layers "
            f"(K={cfg.repeat}), above the limit MAX_TOKENS_PER_SEQUENCE="
            f"{MAX_TOKENS_PER_SEQUENCE} of the static mask patterns"
        )


def check_max_len(cfg: ModelConfig, max_len, needed: int, what: str) -> int:
    """The cache length `max_len` (default `cfg.max_seq_len`) as an int that holds `needed` positions."""
    max_len = cfg.max_seq_len if max_len is None else as_int("max_len", max_len, 1)
    if max_len > cfg.max_seq_len:
        raise ValueError(f"max_len={max_len} exceeds ModelConfig.max_seq_len={cfg.max_seq_len}")
    if needed > max_len:
        raise ValueError(f"{what} needs {needed} positions but the cache holds max_len={max_len}")
    return max_len
