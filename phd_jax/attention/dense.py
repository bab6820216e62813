"""The dense reference: full scores, a boolean mask, a plain softmax in float32.

Also the pieces every other attention path shares: `MASK_VALUE`, the grouped-query head
split (`grouped` / `ungrouped`), and softmax partials over disjoint key sets
(`partial_attention`, `combine`) that decode's cached attention merges.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

# Finite, so that a fully masked row gives a uniform (never NaN) softmax.
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


def dot_ready(x):
    """XLA:CPU has no bf16 x bf16 -> f32 dot; upcast there (GPU/TPU keep bf16 inputs)."""
    if jax.default_backend() == "cpu" and x.dtype in (jnp.bfloat16, jnp.float16):
        return x.astype(jnp.float32)
    return x


def grouped(q, num_kv_heads: int):
    """Scale q and split heads into (kv head, group): `[B, N, H, D]` -> `[B, KVH, G, N, D]`."""
    b, n, h, d = q.shape
    q = q * jnp.asarray(d**-0.5, q.dtype)
    return q.reshape(b, n, num_kv_heads, h // num_kv_heads, d).transpose(0, 2, 3, 1, 4)


def ungrouped(o, dtype):
    """The inverse of `grouped`'s head split: `[B, KVH, G, N, D]` -> `[B, N, H, D]` in `dtype`."""
    b, kvh, g, n, d = o.shape
    return o.transpose(0, 3, 1, 2, 4).reshape(b, n, kvh * g, d).astype(dtype)


def partial_attention(qg, groups, kv_layout: str = "bksd"):
    """Unnormalised attention of queries over the union of several key groups.

    qg: `[B, KVH, G, Q, D]`, already scaled. groups: `(k, v, mask)` with k/v in
    `kv_layout` ("bksd" = `[B, KVH, S, D]`, "bskd" = `[B, S, KVH, D]`) and a
    boolean mask broadcastable to `[B, KVH, G, Q, S]`, or None for "all allowed".
    Returns `(m, l, o)`: row max, sum of exp(s - m), and exp(s - m) @ v, all
    float32, so that partials over disjoint key sets merge exactly (`combine`).
    """
    scores = []
    for k, _, mask in groups:
        s = jnp.einsum(f"bkgqd,{kv_layout}->bkgqs", dot_ready(qg), dot_ready(k), preferred_element_type=jnp.float32)
        scores.append(s if mask is None else jnp.where(mask, s, MASK_VALUE))
    m = functools.reduce(jnp.maximum, [s.max(axis=-1, keepdims=True) for s in scores])
    m = jax.lax.stop_gradient(m)  # softmax is invariant to the shift
    probs = [jnp.exp(s - m) for s in scores]
    denom = functools.reduce(jnp.add, [p.sum(axis=-1, keepdims=True) for p in probs])
    out = functools.reduce(
        jnp.add,
        [
            jnp.einsum(
                f"bkgqs,{kv_layout}->bkgqd",
                dot_ready(p.astype(v.dtype)),
                dot_ready(v),
                preferred_element_type=jnp.float32,
            )
            for p, (_, v, _) in zip(probs, groups)
        ],
    )
    return m, denom, out


def combine(*partials):
    """Softmax-normalised output from `(m, l, o)` partials over disjoint key sets."""
    m = functools.reduce(jnp.maximum, [p[0] for p in partials])
    scale = [jnp.exp(p[0] - m) for p in partials]
    denom = functools.reduce(jnp.add, [a * p[1] for a, p in zip(scale, partials)])
    out = functools.reduce(jnp.add, [a * p[2] for a, p in zip(scale, partials)])
    return out / denom


def dense_attention(q, k, v, mask):
    """Reference: full scores, the full boolean mask `[N, N]` (or per sequence `[B, N, N]`),
    plain softmax."""
    qg = grouped(q, k.shape[2])
    mask = jnp.asarray(mask)
    if mask.ndim == 3:
        mask = mask[:, None, None]
    return ungrouped(combine(partial_attention(qg, [(k, v, mask)], "bskd")), q.dtype)
