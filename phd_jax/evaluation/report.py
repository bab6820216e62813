"""Inference cost of a model: KV cache bytes vs a vanilla model of the same size, prefill time,
per-token decode time, at a few context lengths."""

from __future__ import annotations

import statistics
import time

import jax
import numpy as np

from phd_jax.config import ModelConfig
from phd_jax.decode import decode_step, kv_cache_bytes, prefill


def vanilla_of(cfg: ModelConfig) -> ModelConfig:
    """The vanilla model of the same size (PHD adds no parameters: the same weights run it)."""
    return cfg.replace(variant="vanilla", repeat=1, window=0, chunk=None, position_mode="shared")


def _timed(fn, repeats: int) -> float:
    fn()  # compile and warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _measure(params, cfg, length, batch, decode_tokens, repeats):
    max_len = length + decode_tokens + 1
    prompt = np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, length)).astype(np.int32)
    prefill_s = _timed(lambda: jax.block_until_ready(prefill(params, cfg, prompt, max_len)), repeats)
    _, state = prefill(params, cfg, prompt, max_len)
    tok = np.zeros((batch,), np.int32)
    logits, state = decode_step(params, cfg, state, tok)  # compile
    jax.block_until_ready(logits)
    steps = []
    for _ in range(decode_tokens):
        t0 = time.perf_counter()
        logits, state = decode_step(params, cfg, state, tok)
        jax.block_until_ready(logits)
        steps.append(time.perf_counter() - t0)
    return prefill_s, statistics.median(steps)


def inference_report(
    params,
    cfg: ModelConfig,
    lengths=(64, 256),
    batch: int = 1,
    decode_tokens: int = 8,
    repeats: int = 3,
    compare_vanilla: bool = True,
) -> list[dict]:
    """One row per prompt length: cache bytes (this model, vanilla), prefill seconds and median
    decode seconds per token (this model and, with `compare_vanilla`, the vanilla model on the
    same weights). Lengths that do not fit `max_seq_len` are skipped."""
    vanilla = vanilla_of(cfg)
    rows = []
    for length in lengths:
        if length + decode_tokens + 1 > cfg.max_seq_len:
            continue
        max_len = length + decode_tokens + 1
        row = {
            "prompt_len": length,
            "batch": batch,
            "kv_cache_bytes": kv_cache_bytes(cfg, batch, max_len),
            "vanilla_kv_cache_bytes": kv_cache_bytes(vanilla, batch, max_len),
        }
        row["prefill_s"], row["decode_s_per_token"] = _measure(params, cfg, length, batch, decode_tokens, repeats)
        if compare_vanilla and cfg != vanilla:
            row["vanilla_prefill_s"], row["vanilla_decode_s_per_token"] = _measure(
                params, vanilla, length, batch, decode_tokens, repeats
            )
        rows.append(row)
    return rows
