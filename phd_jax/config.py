"""ModelConfig: one validated, hashable description of a PHD model.

Hashable (frozen) so that it can be a static argument of `jax.jit`; every
derived quantity the masks, prefill and decode need lives here as a property,
so the rest of the library never re-derives K-1, ceil(W/(K-1)) and friends.
"""
from __future__ import annotations

import dataclasses
import math
import re

import jax.numpy as jnp

VARIANTS = ("vanilla", "naive", "phd", "phd_swa", "phd_cswa")
BACKENDS = ("auto", "dense", "blocksparse", "splash")
POSITION_MODES = ("shared", "flat")
DTYPES = ("float32", "bfloat16", "float16")
REMAT_POLICIES = ("none", "full", "dots")


def _fail(field: str, value, allowed: str):
    raise ValueError(f"ModelConfig.{field}={value!r} is invalid: {allowed}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A Llama/OLMo2-style decoder plus the PHD token-repetition scheme.

    PHD fields (spec section 1): `variant`, `repeat` (K), `window` (W, counted
    in hidden decoding tokens), `chunk` (C, counted in original positions,
    `phd_cswa` only), `position_mode` ("shared": every copy of position n has
    rotary position n; "flat": copy s has n*K + s; default: flat for `naive`,
    whose definition is the literal repeated sequence, shared otherwise).
    """

    vocab_size: int = 256
    num_layers: int = 4
    d_model: int = 256
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 64
    mlp_dim: int = 1024
    max_seq_len: int = 1024
    variant: str = "vanilla"
    repeat: int = 1
    window: int = 0
    chunk: int | None = None
    position_mode: str | None = None   # None: "flat" for naive (the literal repeated sequence), else "shared"
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = True
    qk_norm: bool = False
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention: str = "auto"
    # Tile sizes of the static block-sparse pattern (splash needs multiples of 128).
    block_q: int = 128
    block_kv: int = 128
    scan_layers: bool = True
    remat: str = "none"
    init_std: float = 0.02

    def __post_init__(self):
        if self.position_mode is None:
            object.__setattr__(self, "position_mode", "flat" if self.variant == "naive" else "shared")
        for f in ("vocab_size", "num_layers", "d_model", "num_heads", "num_kv_heads",
                  "head_dim", "mlp_dim", "max_seq_len", "block_q", "block_kv"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                _fail(f, v, "must be an integer >= 1")
        if self.num_heads % self.num_kv_heads:
            _fail("num_kv_heads", self.num_kv_heads,
                  f"must divide num_heads={self.num_heads} (grouped-query attention)")
        if self.head_dim % 2:
            _fail("head_dim", self.head_dim, "must be even (rotary embeddings rotate pairs)")
        if self.variant not in VARIANTS:
            _fail("variant", self.variant, f"allowed: {', '.join(VARIANTS)}")
        if not isinstance(self.repeat, int) or isinstance(self.repeat, bool) or self.repeat < 1:
            _fail("repeat", self.repeat, "K must be an integer >= 1")
        if self.variant == "vanilla" and self.repeat != 1:
            _fail("repeat", self.repeat, "variant 'vanilla' needs repeat=1 (use 'phd' for K > 1)")
        if not isinstance(self.window, int) or isinstance(self.window, bool) or self.window < 0:
            _fail("window", self.window, "W must be an integer >= 0")
        if self.window and self.variant not in ("phd_swa", "phd_cswa"):
            _fail("window", self.window,
                  f"variant {self.variant!r} has no sliding window; use 0, or phd_swa / phd_cswa")
        if self.variant == "phd_cswa":
            if not isinstance(self.chunk, int) or isinstance(self.chunk, bool) or self.chunk < 1:
                _fail("chunk", self.chunk, "phd_cswa needs an integer chunk C >= 1")
        elif self.chunk is not None:
            _fail("chunk", self.chunk, f"only phd_cswa is chunked; use None for {self.variant!r}")
        if self.position_mode not in POSITION_MODES:
            _fail("position_mode", self.position_mode, f"allowed: {', '.join(POSITION_MODES)}")
        for f in ("dtype", "param_dtype"):
            if getattr(self, f) not in DTYPES:
                _fail(f, getattr(self, f), f"allowed: {', '.join(DTYPES)}")
        if self.attention not in BACKENDS:
            _fail("attention", self.attention, f"allowed: {', '.join(BACKENDS)}")
        if self.remat not in REMAT_POLICIES:
            _fail("remat", self.remat, f"allowed: {', '.join(REMAT_POLICIES)}")
        if not self.rope_theta > 0:
            _fail("rope_theta", self.rope_theta, "must be > 0")
        if not self.norm_eps > 0:
            _fail("norm_eps", self.norm_eps, "must be > 0")
        if not self.init_std > 0:
            _fail("init_std", self.init_std, "must be > 0")

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
    def from_name(cls, name: str, **kwargs) -> "ModelConfig":
        """Inverse of `name`: `ModelConfig.from_name("PHD-CSWA-3-16-32", d_model=...)`."""
        patterns = [
            (r"vanilla", lambda m: dict(variant="vanilla")),
            (r"naive-(\d+)", lambda m: dict(variant="naive", repeat=int(m[1]))),
            (r"phd-(\d+)", lambda m: dict(variant="phd", repeat=int(m[1]))),
            (r"phd-swa-(\d+)-(\d+)-inf", lambda m: dict(variant="phd_swa", repeat=int(m[1]), window=int(m[2]))),
            (r"phd-cswa-(\d+)-(\d+)-(\d+)",
             lambda m: dict(variant="phd_cswa", repeat=int(m[1]), window=int(m[2]), chunk=int(m[3]))),
        ]
        for pat, make in patterns:
            m = re.fullmatch(pat, name.strip().lower())
            if m:
                return cls(**{**make(m), **kwargs})
        raise ValueError(
            f"model name {name!r} is not one of: vanilla, naive-K, PHD-K, PHD-SWA-K-W-inf, PHD-CSWA-K-W-C")

    def replace(self, **kwargs) -> "ModelConfig":
        return dataclasses.replace(self, **kwargs)

    # ---- derived PHD quantities -----------------------------------------------
    @property
    def is_phd(self) -> bool:
        """True when the model has hidden decoding tokens that are not cached."""
        return self.variant in ("phd", "phd_swa", "phd_cswa") and self.repeat > 1

    @property
    def effective_window(self) -> int:
        """W as the mask uses it (0 for variants without a window, or K = 1)."""
        return self.window if self.is_phd and self.variant != "phd" else 0

    @property
    def effective_chunk(self) -> int | None:
        return self.chunk if self.variant == "phd_cswa" else None

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
        if self.variant == "phd_cswa":
            tail = min(tail, self.chunk if ragged else (prompt_len - 1) % self.chunk + 1)
        return min(tail, prompt_len)

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def weight_dtype(self):
        return jnp.dtype(self.param_dtype)
