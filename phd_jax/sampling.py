"""Sampling and `generate`: one jitted `lax.scan` over an explicit state.

Sampling methods are small functions of the logits; `generate` composes
prefill, a scan of decode steps, and sticky per-sequence EOS handling
(after a sequence emits `eos_id`, every later token is `pad_id`).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from phd_jax.config import ModelConfig
from phd_jax.decode import _check_state_fits, _decode_step, prefill


def top_k_filter(logits, k: int):
    """Keep the k largest logits per row (k = 0: keep all)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    _, idx = jax.lax.top_k(logits, k)   # exactly k, even with ties
    keep = jnp.zeros(logits.shape, bool).at[jnp.arange(logits.shape[0])[:, None], idx].set(True)
    return jnp.where(keep, logits, -jnp.inf)


def top_p_filter(logits, p):
    """Nucleus filter: keep the smallest set of tokens whose probability reaches p (may be traced)."""
    if isinstance(p, (int, float)) and p >= 1.0:
        return logits
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly before each token
    sorted_logits = jnp.where(before < p, sorted_logits, -jnp.inf)  # the top token always stays
    inverse = jnp.argsort(order, axis=-1)
    return jnp.take_along_axis(sorted_logits, inverse, axis=-1)


def sample_token(logits, rng, temperature=0.0, top_k: int = 0, top_p=1.0):
    """`[B, vocab]` logits -> `[B]` token ids. temperature 0 (or top_k 1) is greedy.

    `temperature` and `top_p` may be traced values (no recompilation when they change).
    """
    if top_k == 1 or (isinstance(temperature, (int, float)) and temperature == 0.0):
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = top_p_filter(top_k_filter(logits / temperature, top_k), top_p)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "greedy", "top_k",
                                             "use_top_p", "eos_id", "pad_id"))
def _generate_loop(params, config, logits, state, rng, temperature, top_p, *, max_new_tokens, greedy,
                   top_k, use_top_p, eos_id, pad_id):
    def emit(logits, rng, done):
        if greedy:
            tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        else:
            tok = sample_token(logits, rng, temperature, top_k, top_p if use_top_p else 1.0)
        if eos_id is None:
            return tok, done
        tok = jnp.where(done, pad_id, tok)
        return tok, done | (tok == eos_id)

    rng, first_rng = jax.random.split(rng)
    first, done = emit(logits, first_rng, jnp.zeros(logits.shape[:1], bool))

    def step(carry, rng):
        state, tok, done = carry
        logits, state = _decode_step(params, config, state, tok)
        tok, done = emit(logits, rng, done)
        return (state, tok, done), tok

    rngs = jax.random.split(rng, max_new_tokens - 1)
    _, rest = jax.lax.scan(step, (state, first, done), rngs)
    return jnp.concatenate([first[:, None], rest.T], axis=1)


def generate(params, config: ModelConfig, prompt, max_new_tokens: int, *, rng=None,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, eos_id: int | None = None,
             pad_id: int = 0, max_len: int | None = None, lengths=None):
    """Continue `prompt [B, T]` by `max_new_tokens` tokens; returns `[B, max_new_tokens]` int32.

    Greedy by default; `temperature > 0` samples (after `top_k` / `top_p`
    filtering) from `rng` (a PRNG key or an int seed). With `eos_id`, a sequence stops at its first EOS
    and the remaining tokens are `pad_id`. The cache holds `max_len`
    positions (default `config.max_seq_len`): prompt + new tokens must fit.
    `lengths [B]` gives true prompt lengths of a right-padded batch.
    """
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} is invalid: must be an integer >= 1")
    if temperature < 0:
        raise ValueError(f"temperature={temperature} is invalid: must be >= 0")
    if not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k={top_k!r} is invalid: must be an integer >= 0 (0 = off)")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p} is invalid: must be in (0, 1]")
    if temperature > 0 and top_k != 1 and rng is None:
        raise ValueError("sampling with temperature > 0 needs rng=jax.random.key(...)")
    for name, tok in (("eos_id", eos_id), ("pad_id", pad_id)):
        if tok is not None and not 0 <= tok < config.vocab_size:
            raise ValueError(f"{name}={tok} is outside [0, vocab_size={config.vocab_size})")
    prompt = jnp.asarray(prompt)
    max_len = config.max_seq_len if max_len is None else max_len
    t = prompt.shape[-1]
    _check_state_fits(config, max_len, t + max_new_tokens,
                      f"a prompt of length {t} plus max_new_tokens={max_new_tokens}")
    logits, state = prefill(params, config, prompt, max_len, lengths)
    rng = jax.random.key(0 if rng is None else rng) if isinstance(rng, (int, type(None))) else rng
    return _generate_loop(params, config, logits, state, rng, jnp.float32(temperature),
                          jnp.float32(top_p), max_new_tokens=max_new_tokens,
                          greedy=temperature == 0 or top_k == 1, top_k=top_k, use_top_p=top_p < 1.0,
                          eos_id=eos_id, pad_id=pad_id)
