"""Analytic FLOP counts of a PHD model, and the peak FLOP/s they are compared with.

What is counted (the usual convention of PaLM / MaxText MFU, 2 FLOPs per multiply-add):
- `layers`: every projection of every decoder layer (query, key, value, out, and the
  three SwiGLU matrices) over all K*T tokens of a sequence: the original tokens and
  the hidden decoding tokens alike (`naive` also runs K*T tokens);
- `attention`: scores and the weighted sum of values, `4 * head_dim * num_heads` per
  allowed (query, key) pair of the *actual* mask, per layer. Pairs are counted from the
  spec's rules (`attention_pairs`), not T^2/2: a sliding window or a chunk costs what
  it keeps, and kernel padding or skipped-but-computed tiles are not useful FLOPs;
- `unembed`: the output projection over the T rows that produce logits (only the last
  copy of each position does, docs/spec.md section 2).
Not counted: embedding lookups, norms, rotary embeddings, softmax, the loss and the
optimizer (all O(tokens * d_model), a few percent at most).

`peak_flops` gives the denominator of MFU: a number from the user (the accelerator's
datasheet) or, by default, a quick dense matmul measured on this machine.
"""

from __future__ import annotations

import functools
import time

import numpy as np

from phd_jax.config import DTYPES, DType, ModelConfig
from phd_jax.errors import as_float, as_int, one_of

TERA = 1e12  # FLOP/s per TFLOP/s
# The measured peak: the best of PEAK_REPEATS timed square matmuls of PEAK_MATMUL_SIZE[platform]
# (else PEAK_MATMUL_SIZE_DEFAULT) rows, big enough to be compute-bound, small enough to take < 1 s.
PEAK_MATMUL_SIZE = {"cpu": 1024}
PEAK_MATMUL_SIZE_DEFAULT = 8192
PEAK_REPEATS = 5


def attention_pairs(cfg: ModelConfig, seq_len: int) -> int:
    """Allowed (query, key) pairs of `cfg`'s mask over `seq_len` positions.

    Equals `phd_jax.attention_mask(...).sum()`, but is computed per query in closed form
    (O(T*K) time and memory, never the [T*K, T*K] mask), so T = 32768, K = 4 is instant.
    Per query (n, s) of a PHD variant: n + 1 original keys (rule 1) and, for s >= 1, the
    hidden keys h in [lo, h(n, s)], one contiguous interval of hidden order: rule 2 gives
    [n*(K-1), h(n, s)], the window [max(h(n, s) - W, start of n's chunk), h(n, s)].
    """
    t = as_int("seq_len", seq_len, low=1)
    k = cfg.repeat
    if cfg.variant == "naive":  # causal over the K*T repeated tokens
        n = t * k
        return n * (n + 1) // 2
    originals = k * (t * (t + 1) // 2)  # every copy of position n sees n + 1 originals
    if not cfg.is_phd:
        return originals
    n = np.arange(t, dtype=np.int64)[:, None]
    s = np.arange(1, k, dtype=np.int64)[None, :]
    h = n * (k - 1) + (s - 1)  # hidden order of the query (docs/spec.md section 3)
    own = n * (k - 1)  # first hidden copy of the query's position
    w = cfg.effective_window
    if w >= 1:
        chunk = cfg.effective_chunk
        first = 0 if chunk is None else (n // chunk) * chunk * (k - 1)
        lo = np.minimum(own, np.maximum(h - w, first))
    else:
        lo = own
    return int(originals + (h - lo + 1).sum())


def forward_flops(cfg: ModelConfig, seq_len: int) -> dict[str, float]:
    """FLOPs of one forward pass over one sequence of `seq_len` original positions.

    Returns `{"layers", "attention", "unembed", "total"}` (see the module docstring).
    """
    t = as_int("seq_len", seq_len, low=1)
    d, h, kvh, hd = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    per_token = 2 * (
        d * h * hd  # query
        + 2 * d * kvh * hd  # key, value
        + h * hd * d  # out
        + 3 * d * cfg.mlp_dim
    )  # SwiGLU gate, up, down
    layers = float(cfg.num_layers * per_token * t * cfg.repeat)
    attention = float(cfg.num_layers * 4 * hd * h * attention_pairs(cfg, t))
    unembed = float(2 * d * cfg.vocab_size * t)
    return {"layers": layers, "attention": attention, "unembed": unembed, "total": layers + attention + unembed}


def train_flops_per_sequence(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs of one sequence: 3 x the forward count (forward + a backward pass of
    twice the forward's FLOPs), the usual convention (Kaplan et al., PaLM's MFU). Extra
    recomputation from `remat` is not counted: it is not useful work."""
    return 3.0 * forward_flops(cfg, seq_len)["total"]


def peak_flops(peak_tflops: float | None = None, dtype: DType = "float32") -> float:
    """Peak FLOP/s for MFU: `peak_tflops * TERA` if given (> 0, e.g. the datasheet
    number of the accelerator), else the best FLOP/s of a dense square matmul in `dtype`
    measured on the default device (once per process and dtype, under a second on CPU)."""
    if peak_tflops is not None and peak_tflops != 0:
        return as_float("peak_tflops", peak_tflops, low=0, low_open=True) * TERA
    return _measured_peak(one_of("dtype", dtype, DTYPES))


@functools.cache
def _measured_peak(dtype: str) -> float:
    import jax
    import jax.numpy as jnp

    platform = jax.devices()[0].platform
    n = PEAK_MATMUL_SIZE.get(platform, PEAK_MATMUL_SIZE_DEFAULT)
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    matmul = jax.jit(jnp.matmul)
    jax.block_until_ready(matmul(a, b))  # compile
    best = float("inf")
    for _ in range(PEAK_REPEATS):
        t0 = time.perf_counter()
        jax.block_until_ready(matmul(a, b))
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best
