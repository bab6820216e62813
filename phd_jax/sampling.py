"""Sampling and `generate`: one jitted `lax.scan` over an explicit state.

Sampling methods are small functions of the logits; `generate` composes
prefill, a scan of decode steps, and sticky per-sequence EOS handling
(after a sequence emits `eos_id`, every later token is `pad_id`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from phd_jax.config import ModelConfig, check_config, check_max_len
from phd_jax.decode import prefill, step
from phd_jax.errors import as_float, as_int, as_rng, as_token_id, fail, is_traced


def check_sampling(temperature, top_k, top_p, vocab_size: int):
    """(temperature, top_k, top_p) as Python numbers when concrete; traced ones pass through.

    temperature: finite, >= 0. top_k: an int in [0, vocab] (it sets a static shape, so it is
    never traced). top_p: in (0, 1]. Traced temperature / top_p cannot be checked: the
    sampler then treats a temperature that is not finite and > 0 as greedy and clamps
    top_p into [0, 1] (the most likely token is always kept).
    """
    if not is_traced(temperature):
        temperature = as_float("temperature", temperature, 0.0)
    top_k = as_int("top_k", top_k, 0, vocab_size)
    if not is_traced(top_p):
        top_p = as_float("top_p", top_p, 0.0, 1.0, low_open=True)
    return temperature, top_k, top_p


def top_k_filter(logits, k: int):
    """Keep the k largest logits per row (k = 0: keep all)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    _, idx = jax.lax.top_k(logits, k)  # exactly k, even with ties
    keep = jnp.zeros(logits.shape, bool).at[jnp.arange(logits.shape[0])[:, None], idx].set(True)
    return jnp.where(keep, logits, -jnp.inf)


def top_p_filter(logits, p):
    """Nucleus filter: keep the smallest set of tokens whose probability reaches p.

    `p` may be traced; it is then clamped into [0, 1] (NaN counts as 0), and the most
    likely token is always kept, so p <= 0 keeps only that token.
    """
    if isinstance(p, (int, float)) and p >= 1.0:
        return logits
    p = jnp.clip(jnp.nan_to_num(jnp.asarray(p, jnp.float32), nan=0.0), 0.0, 1.0)
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly before each token
    keep = (before < p) | (jnp.arange(logits.shape[-1]) == 0)  # the top token always stays
    sorted_logits = jnp.where(keep, sorted_logits, -jnp.inf)
    inverse = jnp.argsort(order, axis=-1)
    return jnp.take_along_axis(sorted_logits, inverse, axis=-1)


def sample_token(logits, rng, temperature=0.0, top_k: int = 0, top_p=1.0):
    """`[B, vocab]` logits -> `[B]` token ids. temperature 0 (or top_k 1) is greedy.

    Concrete arguments are checked (`temperature` finite >= 0, `top_k` in [0, vocab],
    `top_p` in (0, 1]; numpy / JAX scalars accepted; `rng` a key or an integer seed).
    `temperature` and `top_p` may be traced values (no recompilation when they change);
    they cannot be checked then: a traced temperature that is not finite and > 0 samples
    greedily, a traced top_p is clamped into [0, 1] (the most likely token always stays).
    """
    temperature, top_k, top_p = check_sampling(temperature, top_k, top_p, logits.shape[-1])
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    if top_k == 1 or (not is_traced(temperature) and temperature == 0.0):
        return greedy
    rng = as_rng("rng", rng)
    if not is_traced(temperature):
        logits = top_p_filter(top_k_filter(logits / temperature, top_k), top_p)
        return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)
    ok = jnp.isfinite(temperature) & (temperature > 0)
    logits = top_p_filter(top_k_filter(logits / jnp.where(ok, temperature, 1.0), top_k), top_p)
    return jnp.where(ok, jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32), greedy)


@functools.partial(
    jax.jit, static_argnames=("cfg", "max_new_tokens", "greedy", "top_k", "use_top_p", "eos_id", "pad_id")
)
def decode_loop(
    params, cfg, logits, state, rng, temperature, top_p, *, max_new_tokens, greedy, top_k, use_top_p, eos_id, pad_id
):
    """`generate` after prefill, unchecked: `max_new_tokens` tokens `[B, n]` from the prefill's
    `logits` and `state`, one jitted `lax.scan` of decode steps. `generate` checks every argument
    and calls this; benchmarks time it alone."""

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

    def scan_step(carry, rng):
        state, tok, done = carry
        logits, state = step(params, cfg, state, tok)
        tok, done = emit(logits, rng, done)
        return (state, tok, done), tok

    rngs = jax.random.split(rng, max_new_tokens - 1)
    _, rest = jax.lax.scan(scan_step, (state, first, done), rngs)
    return jnp.concatenate([first[:, None], rest.T], axis=1)


def generate(
    params,
    cfg: ModelConfig,
    prompt,
    max_new_tokens: int,
    *,
    rng=None,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_id: int | None = None,
    pad_id: int = 0,
    max_len: int | None = None,
    lengths=None,
):
    """Continue `prompt [B, T]` by `max_new_tokens` tokens; returns `[B, max_new_tokens]` int32.

    Greedy by default; `temperature > 0` samples (after `top_k` / `top_p`
    filtering) from `rng` (a PRNG key or an integer seed). With `eos_id`, a sequence stops at its first EOS
    and the remaining tokens are `pad_id`. The cache holds `max_len`
    positions (default `cfg.max_seq_len`): prompt + new tokens must fit.
    `lengths [B]` gives true prompt lengths of a right-padded batch.
    Every argument is checked (numpy / JAX scalars accepted); `temperature` and
    `top_p` may be traced (see `sample_token`), the others set static shapes.
    """
    check_config(cfg)
    max_new_tokens = as_int("max_new_tokens", max_new_tokens, 1)
    temperature, top_k, top_p = check_sampling(temperature, top_k, top_p, cfg.vocab_size)
    traced_t = is_traced(temperature)
    greedy = top_k == 1 or (not traced_t and temperature == 0)
    if not greedy and rng is None:
        fail("rng", rng, "sampling (temperature > 0) needs rng=jax.random.key(...) or an integer seed")
    eos_id = None if eos_id is None else as_token_id("eos_id", eos_id, cfg.vocab_size)
    pad_id = as_token_id("pad_id", pad_id, cfg.vocab_size)
    prompt = jnp.asarray(prompt)
    t = prompt.shape[-1]
    max_len = check_max_len(
        cfg, max_len, t + max_new_tokens, f"a prompt of length {t} plus max_new_tokens={max_new_tokens}"
    )
    rng = jax.random.key(0) if rng is None else as_rng("rng", rng)
    logits, state = prefill(params, cfg, prompt, max_len, lengths)
    use_top_p = is_traced(top_p) or top_p < 1.0
    return decode_loop(
        params,
        cfg,
        logits,
        state,
        rng,
        jnp.float32(0.0 if greedy else temperature),
        jnp.float32(top_p),
        max_new_tokens=max_new_tokens,
        greedy=greedy,
        top_k=top_k,
        use_top_p=use_top_p,
        eos_id=eos_id,
        pad_id=pad_id,
    )
