"""The persistent KV cache as decode reads it, and attention of new tokens over it.

Below the model (which reads it) and above attention (whose softmax partials it merges);
`phd_jax.decode` owns the cache's writes and its `DecodeState`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax

from phd_jax.attention.dense import combine, grouped, partial_attention, ungrouped


class KVCache(NamedTuple):
    """One layer's (or, stacked, every layer's) persistent cache as decode reads it.

    k, v: `[B, KVH, S, D]` original-token cache; window_k, window_v: `[B, KVH, W, D]`
    ring buffer of recent hidden decoding tokens (W = 0 outside PHD-SWA/CSWA). Heads
    before slots: the layout the attention dots read, so no decode step transposes the
    cache (a `[B, S, KVH, D]` cache cost a copy of every layer's cache per step).
    """

    k: jax.Array
    v: jax.Array
    window_k: jax.Array
    window_v: jax.Array

    @property
    def nbytes(self) -> int:
        """Bytes of the four arrays (keys and values, originals and window)."""
        return sum(int(x.nbytes) for x in self)


def cached_attention(q, new_k, new_v, cache: KVCache, mask):
    """Decode-time attention of Q new tokens over [cache | window | new tokens].

    q `[B, Q, H, D]`; new_k/new_v `[B, Q, KVH, D]`; `cache` one layer's `KVCache`;
    mask `[B, Q, S + W + Q]` from `masks.allowed`.
    The cache is read in place (no concatenation of keys, no transpose).
    """
    slots, window = cache.k.shape[2], cache.window_k.shape[2]
    qg = grouped(q, cache.k.shape[1])
    m = mask[:, None, None]  # [B, 1, 1, Q, S+W+Q]
    new = [(new_k.transpose(0, 2, 1, 3), new_v.transpose(0, 2, 1, 3), m[..., slots + window :])]
    groups = [(cache.k, cache.v, m[..., :slots])] + new
    if window:
        groups.insert(1, (cache.window_k, cache.window_v, m[..., slots : slots + window]))
    return ungrouped(combine(partial_attention(qg, groups, "bksd")), q.dtype)
