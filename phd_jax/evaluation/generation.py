"""Text in, text out: batched prompts through `phd_jax.generate` with bucketed shapes."""

from __future__ import annotations

import numpy as np

from phd_jax.config import ModelConfig
from phd_jax.errors import as_float, as_int, fail
from phd_jax.evaluation.scoring import bucket
from phd_jax.sampling import generate


def _special(tokenizer, name: str, cfg: ModelConfig):
    tid = getattr(tokenizer, name, None)
    return tid if isinstance(tid, int) and 0 <= tid < cfg.vocab_size else None


def generate_text(
    params,
    cfg: ModelConfig,
    tokenizer,
    prompts,
    max_new_tokens: int = 64,
    *,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    stop_at_eos: bool = True,
    until=(),
    batch_size: int = 8,
    truncate: bool = False,
    min_bucket: int = 16,
) -> list[str]:
    """Continue each prompt; return the new text only (cut at EOS and at any string in `until`).

    Greedy by default; `temperature > 0` samples with `top_k` / `top_p`. A prompt
    that does not fit the context with `max_new_tokens` after it is an error, or with
    `truncate=True` loses its oldest tokens (what lm-eval expects).
    """
    max_new_tokens = as_int("max_new_tokens", max_new_tokens, 1, cfg.max_seq_len - 1)
    temperature = as_float("temperature", temperature, 0.0)
    top_p = as_float("top_p", top_p, 0.0, 1.0, low_open=True)
    top_k = as_int("top_k", top_k, 0)
    budget = cfg.max_seq_len - max_new_tokens
    encoded = []
    for i, p in enumerate(prompts):
        ids = tokenizer.encode(p) if isinstance(p, str) else list(p)
        if not ids:
            bos = _special(tokenizer, "bos_id", cfg)
            ids = [bos if bos is not None else 0]
        if len(ids) > budget:
            if not truncate:
                fail(
                    f"prompt[{i}]",
                    p,
                    f"has {len(ids)} tokens; with max_new_tokens={max_new_tokens} "
                    f"it needs {len(ids) + max_new_tokens} positions, more than the model's context "
                    f"max_seq_len={cfg.max_seq_len}",
                )
            ids = ids[-budget:]
        bad = [t for t in ids if not 0 <= t < cfg.vocab_size]
        if bad:
            fail(
                f"prompt[{i}]",
                p,
                f"encodes to id {bad[0]}, outside the model's vocab_size="
                f"{cfg.vocab_size} (wrong tokenizer for this checkpoint?)",
            )
        encoded.append(ids)
    eos = _special(tokenizer, "eos_id", cfg) if stop_at_eos else None
    pad = _special(tokenizer, "pad_id", cfg) or 0
    until = [until] if isinstance(until, str) else list(until)
    out: list = [None] * len(encoded)
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = min(bucket(len(encoded[idx[0]]), cfg.max_seq_len, min_bucket), budget)
        prompt = np.zeros((batch_size, width), np.int32)
        lengths = np.ones((batch_size,), np.int32)
        for row, i in enumerate(idx):
            prompt[row, : len(encoded[i])] = encoded[i]
            lengths[row] = len(encoded[i])
        new = np.asarray(
            generate(
                params,
                cfg,
                prompt,
                max_new_tokens,
                rng=seed + start,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                eos_id=eos,
                pad_id=pad,
                max_len=width + max_new_tokens,
                lengths=lengths,
            )
        )
        for row, i in enumerate(idx):
            ids = new[row].tolist()
            if eos is not None and eos in ids:
                ids = ids[: ids.index(eos)]
            text = tokenizer.decode(ids)
            for stop in until:
                if stop and stop in text:
                    text = text[: text.index(stop)]
            out[i] = text
    return out
