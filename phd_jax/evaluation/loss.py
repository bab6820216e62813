"""Validation loss, perplexity and bits per byte on a pipeline's eval batches or a text file.

The loss is the trainer's own (`phd_jax.train.loss.loss_terms`: with `segment_ids`, targets in
another document than their input, and padding = segment 0, do not count), summed over
every counted token of every batch, then divided once (batches weigh by their tokens).
"""

from __future__ import annotations

import jax
import numpy as np

from phd_jax.config import ModelConfig
from phd_jax.errors import as_int, fail
from phd_jax.train.loss import as_batch, bits, loss_terms, perplexity, target_weights


def token_bytes(tokenizer, ids) -> int:
    """UTF-8 bytes that the token ids `ids` stand for (byte tokenizer: one per byte token)."""
    ids = np.asarray(ids).reshape(-1)
    if tokenizer is None or getattr(tokenizer, "name", None) == "byte":
        return int((ids < 256).sum())
    return len(tokenizer.decode(ids.tolist()).encode("utf-8"))


_loss_terms = jax.jit(loss_terms, static_argnums=1)


def _weights(batch: dict) -> np.ndarray:
    """Which targets count, exactly as `loss_terms` decides (for the byte count)."""
    tokens = np.asarray(batch["tokens"])
    if "segment_ids" not in batch:
        return np.ones(tokens[:, 1:].shape, bool)
    return target_weights(np.asarray(batch["segment_ids"]))


def evaluate_loss(params, cfg: ModelConfig, batches, tokenizer=None) -> dict:
    """Loss (nats per token), perplexity, bits per byte, and the token / byte counts over
    `batches` (dicts with `tokens [B, T+1]`, optional `segment_ids`, or token arrays)."""
    nats, count, nbytes = 0.0, 0, 0
    for batch in batches:
        batch = as_batch(batch)
        tokens = np.asarray(batch["tokens"])
        if tokens.ndim != 2 or tokens.shape[1] < 2:
            fail("batch['tokens']", tokens.shape, "must have shape [batch, seq_len + 1] with seq_len >= 1")
        total, n = jax.device_get(
            _loss_terms(params, cfg, {k: np.asarray(v) for k, v in batch.items() if k in ("tokens", "segment_ids")})
        )
        nats += float(total)
        count += int(n)
        for row, w in zip(tokens[:, 1:], _weights(batch)):
            nbytes += token_bytes(tokenizer, row[w])
    if count == 0:
        fail("batches", "(no counted targets)", "hold no target tokens to evaluate")
    loss = nats / count
    return {
        "loss": loss,
        "perplexity": perplexity(loss),
        "bits_per_byte": bits(nats) / max(nbytes, 1),
        "tokens": count,
        "bytes": nbytes,
    }


def text_batches(tokenizer, text: str, seq_len: int, batch_size: int) -> list[dict]:
    """A text as non-overlapping windows of `seq_len` targets (`tokens [B, seq_len + 1]`), in
    batches of `batch_size` rows (the last may be smaller)."""
    seq_len, batch_size = as_int("seq_len", seq_len, 1), as_int("batch_size", batch_size, 1)
    ids = np.asarray(tokenizer.encode(text), np.int32)
    n = (len(ids) - 1) // seq_len
    if n < 1:
        fail("text", text, f"has {len(ids)} tokens; the loss needs at least seq_len + 1 = {seq_len + 1}")
    rows = np.stack([ids[i * seq_len : (i + 1) * seq_len + 1] for i in range(n)])
    return [{"tokens": rows[i : i + batch_size]} for i in range(0, n, batch_size)]
