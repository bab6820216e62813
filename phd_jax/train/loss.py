"""The loss of a batch: one definition for the trainer and for evaluation.

With `segment_ids` (packed documents), targets in another document than their input, and
padding (segment 0), do not count. Losses are sums of per-token NLL divided once by the token
count (batches weigh by their tokens).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from phd_jax.config import ModelConfig
from phd_jax.model import forward

# exp(loss) overflows a float above ~709.78: perplexities are reported as exp(min(loss, cap)).
PERPLEXITY_CAP = 700.0


def as_batch(batch) -> dict:
    """A batch dict from a dict (`tokens [B, T+1]`, optional `segment_ids`) or a token array."""
    return batch if isinstance(batch, dict) else {"tokens": batch}


def target_weights(segment_ids):
    """Which next-token targets of packed documents count (numpy or jax `[B, T+1]` ids -> `[B, T]`
    bool): not a target in another document than its input, and not padding (segment 0)."""
    return (segment_ids[:, 1:] == segment_ids[:, :-1]) & (segment_ids[:, 1:] != 0)


def loss_terms(params, cfg: ModelConfig, batch):
    """(sum of next-token NLL in nats, number of predicted tokens) of a batch dict (or token array)."""
    batch = as_batch(batch)
    tokens = batch["tokens"]
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    if "segment_ids" in batch:
        segment_ids = batch["segment_ids"]
        logits = forward(params, cfg, inputs, segment_ids=segment_ids[:, :-1])
        weights = target_weights(segment_ids).astype(jnp.float32)
    else:
        logits = forward(params, cfg, inputs)
        weights = jnp.ones(targets.shape, jnp.float32)
    logp = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return jnp.sum(nll * weights), jnp.sum(weights)


def cross_entropy(params, cfg: ModelConfig, batch):
    """Mean next-token cross-entropy (nats) of `batch`: a dict with `tokens [B, T+1]` (and
    optional `segment_ids`) or the token array itself."""
    total, count = loss_terms(params, cfg, batch)
    return total / jnp.maximum(count, 1.0)


def perplexity(loss: float) -> float:
    """exp(loss) of a mean loss in nats (capped at exp(PERPLEXITY_CAP): finite for any loss)."""
    return math.exp(min(float(loss), PERPLEXITY_CAP))


def bits(nats: float) -> float:
    """Nats in bits (per token, or per byte when divided by bytes)."""
    return nats / math.log(2)
