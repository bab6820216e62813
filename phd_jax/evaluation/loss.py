"""Validation loss, perplexity and bits per byte on a pipeline's eval batches or a text file."""
from __future__ import annotations

import math

import jax
import numpy as np

from phd_jax.checks import as_int, fail
from phd_jax.config import ModelConfig
from phd_jax.evaluation.scoring import token_logprobs


def token_bytes(tokenizer, ids) -> int:
    """UTF-8 bytes that the token ids `ids` stand for (byte tokenizer: one per byte token)."""
    ids = np.asarray(ids).reshape(-1)
    if tokenizer is None or getattr(tokenizer, "name", None) == "byte":
        return int((ids < 256).sum())
    return len(tokenizer.decode(ids.tolist()).encode("utf-8"))


def evaluate_loss(params, config: ModelConfig, batches, tokenizer=None) -> dict:
    """Mean next-token loss over `batches` (dicts with `tokens [B, T+1]`, optional `weights [B, T]`
    that mark the target positions to count); returns loss (nats/token), perplexity,
    bits_per_byte, tokens and bytes. Every token counts equally, across batches."""
    nats, count, nbytes = 0.0, 0, 0
    for batch in batches:
        tokens = np.asarray(batch["tokens"] if isinstance(batch, dict) else batch)
        if tokens.ndim != 2 or tokens.shape[1] < 2:
            fail("batch['tokens']", tokens.shape, "must have shape [batch, seq_len + 1] with seq_len >= 1")
        weights = np.asarray(batch.get("weights", np.ones(tokens[:, 1:].shape)) if isinstance(batch, dict)
                             else np.ones(tokens[:, 1:].shape), np.float64)
        lp, _ = token_logprobs(params, config, tokens[:, :-1], tokens[:, 1:])
        lp = np.asarray(jax.device_get(lp), np.float64)
        nats -= float((lp * weights).sum())
        count += int(weights.sum())
        for row, w in zip(tokens[:, 1:], weights):
            nbytes += token_bytes(tokenizer, row[w > 0])
    if count == 0:
        fail("batches", batches, "hold no target tokens to evaluate")
    loss = nats / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)),
            "bits_per_byte": nats / math.log(2) / max(nbytes, 1), "tokens": count, "bytes": nbytes}


def text_batches(tokenizer, text: str, seq_len: int, batch_size: int) -> list[dict]:
    """A text as non-overlapping windows of `seq_len` targets (`tokens [B, seq_len + 1]`), the last
    batch padded with rows of zero `weights`, so every batch has one shape."""
    seq_len, batch_size = as_int("seq_len", seq_len, 1), as_int("batch_size", batch_size, 1)
    ids = np.asarray(tokenizer.encode(text), np.int32)
    n = (len(ids) - 1) // seq_len
    if n < 1:
        fail("text", text, f"has {len(ids)} tokens; the loss needs at least seq_len + 1 = {seq_len + 1}")
    rows = np.stack([ids[i * seq_len:(i + 1) * seq_len + 1] for i in range(n)])
    batches = []
    for start in range(0, n, batch_size):
        chunk = rows[start:start + batch_size]
        weights = np.zeros((batch_size, seq_len), np.float32)
        weights[:len(chunk)] = 1.0
        tokens = np.zeros((batch_size, seq_len + 1), np.int32)
        tokens[:len(chunk)] = chunk
        batches.append({"tokens": tokens, "weights": weights})
    return batches
