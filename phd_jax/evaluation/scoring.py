"""Per-token log-probabilities with static shapes: the one jitted function every evaluation uses.

Requests come in many lengths; padding each batch to a power-of-two bucket (and a fixed
batch size) keeps the number of compiled shapes at about log2(max_len), so a long
lm-eval run never recompiles per request. Right padding is safe: the model is causal
over positions (hidden decoding tokens see only earlier positions and their own).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from phd_jax.config import ModelConfig
from phd_jax.model import forward


@functools.partial(jax.jit, static_argnums=1)
def token_logprobs(params, cfg: ModelConfig, inputs, targets):
    """`inputs, targets [B, L]` -> (log p(target) `[B, L]` float32, target is the argmax `[B, L]`)."""
    logits = forward(params, cfg, inputs)
    logp = jax.nn.log_softmax(logits, axis=-1)
    lp = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return lp, jnp.argmax(logits, axis=-1) == targets


def bucket(length: int, max_length: int, min_bucket: int = 16) -> int:
    """The padded length for `length`: the next power of two >= min_bucket, at most max_length."""
    b = min_bucket
    while b < length:
        b *= 2
    return min(b, max_length)


def score_sequences(
    params,
    cfg: ModelConfig,
    seqs,
    batch_size: int,
    max_length: int | None = None,
    min_bucket: int = 16,
    progress=None,
):
    """Score token sequences: for each `(tokens, n)` return (sum of log p of the last n tokens
    given everything before them, whether each of those n tokens is the greedy choice).

    `tokens` (a list of ids, length >= n + 1, at most max_length + 1) runs as inputs
    `tokens[:-1]` and targets `tokens[1:]`. Longest first, in buckets (see module doc).
    """
    max_length = max_length or cfg.max_seq_len
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]))
    out: list = [None] * len(seqs)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = bucket(len(seqs[idx[0]][0]) - 1, max_length, min_bucket)
        inputs = np.zeros((batch_size, width), np.int32)
        targets = np.zeros((batch_size, width), np.int32)
        for row, i in enumerate(idx):
            toks = seqs[i][0]
            inputs[row, : len(toks) - 1] = toks[:-1]
            targets[row, : len(toks) - 1] = toks[1:]
        lp, greedy = jax.device_get(token_logprobs(params, cfg, inputs, targets))
        for row, i in enumerate(idx):
            toks, n = seqs[i]
            span = slice(len(toks) - 1 - n, len(toks) - 1)
            out[i] = (float(lp[row, span].astype(np.float64).sum()), bool(greedy[row, span].all()))
        if progress is not None:
            progress.update(len(idx))
    return out
