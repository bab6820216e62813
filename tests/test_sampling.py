"""generate: greedy against a loop of full forward passes; sampling methods; EOS; errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import random_tokens, tiny_config

import phd_jax
from phd_jax.sampling import sample_token, top_k_filter, top_p_filter

fwd = jax.jit(phd_jax.forward, static_argnums=1)


@pytest.mark.parametrize(
    "kw",
    [
        dict(variant="vanilla", repeat=1),
        dict(variant="phd", repeat=3),
        dict(variant="phd_cswa", repeat=3, window=4, chunk=3),
        dict(variant="naive", repeat=2),
    ],
)
def test_greedy_generate_equals_argmax_over_forward(kw):
    cfg = tiny_config(**kw, init_std=0.2)  # larger weights: less flat logits, fewer near-ties
    params = phd_jax.init_params(cfg, 0)
    prompt = random_tokens(cfg, 2, 5)
    out = phd_jax.generate(params, cfg, prompt, 8, max_len=16)
    assert out.shape == (2, 8) and out.dtype == jnp.int32
    # The growing sequence lives in a fixed buffer (one compile); causality, tested
    # elsewhere, makes the logits at n independent of the zeros after it.
    seq = jnp.zeros((2, 13), jnp.int32).at[:, :5].set(prompt)
    for n in range(5, 13):
        nxt = jnp.argmax(fwd(params, cfg, seq)[:, n - 1], axis=-1).astype(jnp.int32)
        seq = seq.at[:, n].set(nxt)
    np.testing.assert_array_equal(out, seq[:, 5:])


def test_eos_is_sticky_and_pads_afterwards():
    cfg = tiny_config("phd", 2, init_std=0.2)
    params = phd_jax.init_params(cfg, 0)
    prompt = random_tokens(cfg, 3, 4, seed=5)
    free = np.asarray(phd_jax.generate(params, cfg, prompt, 10, max_len=16))
    eos = int(free[0, 3])  # a token sequence 0 emits at step 3
    out = np.asarray(phd_jax.generate(params, cfg, prompt, 10, max_len=16, eos_id=eos, pad_id=60))
    for b in range(3):
        hits = np.nonzero(free[b] == eos)[0]
        if hits.size == 0:
            np.testing.assert_array_equal(out[b], free[b])
            continue
        end = hits[0]
        np.testing.assert_array_equal(out[b, : end + 1], free[b, : end + 1])
        assert (out[b, end + 1 :] == 60).all()
    assert (out[0, 4:] == 60).all()


def test_top_k_one_is_greedy_and_sampling_is_reproducible():
    cfg = tiny_config("phd_swa", 3, 2)
    params = phd_jax.init_params(cfg, 0)
    prompt = random_tokens(cfg, 2, 4)
    greedy = phd_jax.generate(params, cfg, prompt, 6, max_len=12)
    top1 = phd_jax.generate(params, cfg, prompt, 6, max_len=12, rng=jax.random.key(3), temperature=1.5, top_k=1)
    np.testing.assert_array_equal(greedy, top1)
    a = phd_jax.generate(params, cfg, prompt, 6, max_len=12, rng=jax.random.key(7), temperature=1.0)
    b = phd_jax.generate(params, cfg, prompt, 6, max_len=12, rng=jax.random.key(7), temperature=1.0)
    c = phd_jax.generate(params, cfg, prompt, 6, max_len=12, rng=jax.random.key(8), temperature=1.0)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)  # 12 draws from ~61 near-uniform tokens


def test_filters_and_sampler_distribution():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    np.testing.assert_array_equal(np.isfinite(top_k_filter(logits, 2)), [[True, True, False, False]])
    ties = jnp.array([[1.0, 2.0, 2.0, 2.0, 0.0]])
    assert int(np.isfinite(top_k_filter(ties, 2)).sum()) == 2  # exactly k, even with ties
    np.testing.assert_array_equal(np.isfinite(top_p_filter(logits, 0.7)), [[True, True, False, False]])
    np.testing.assert_array_equal(np.isfinite(top_p_filter(logits, 0.85)), [[True, True, True, False]])
    np.testing.assert_array_equal(np.isfinite(top_p_filter(logits, 0.01)), [[True, False, False, False]])
    keys = jax.random.split(jax.random.key(0), 4000)
    draws = jax.vmap(lambda k: sample_token(logits, k, temperature=1.0, top_p=0.85))(keys)[:, 0]
    freq = np.bincount(np.asarray(draws), minlength=4) / 4000
    np.testing.assert_allclose(freq, [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0.0], atol=0.03)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (
            dict(max_new_tokens=20),
            r"a prompt of length 5 plus max_new_tokens=20 needs 25 positions but the cache holds max_len=16",
        ),
        (dict(max_new_tokens=0), r"max_new_tokens=0 is invalid"),
        (dict(max_new_tokens=2, temperature=-1.0), r"temperature=-1.0 is invalid"),
        (dict(max_new_tokens=2, top_p=0.0), r"top_p=0.0 is invalid"),
        (dict(max_new_tokens=2, top_k=-2), r"top_k=-2 is invalid"),
        (dict(max_new_tokens=2, temperature=1.0), r"needs rng=jax.random.key"),
        (dict(max_new_tokens=2, eos_id=61), r"eos_id=61 is invalid: must be a token id in \[0, vocab_size=61\)"),
    ],
)
def test_generate_errors(kwargs, message):
    cfg = tiny_config()
    params = phd_jax.init_params(cfg, 0)
    with pytest.raises(ValueError, match=message):
        phd_jax.generate(params, cfg, random_tokens(cfg, 1, 5), max_len=16, **kwargs)


def test_ragged_generate_equals_one_prompt_at_a_time():
    cfg = tiny_config("phd_cswa", 3, 4, 3, init_std=0.2)
    params = phd_jax.init_params(cfg, 0)
    tokens = random_tokens(cfg, 2, 7, seed=9)
    lengths = jnp.array([7, 4])
    out = phd_jax.generate(params, cfg, tokens, 5, max_len=16, lengths=lengths)
    for b in range(2):
        alone = phd_jax.generate(params, cfg, tokens[b : b + 1, : int(lengths[b])], 5, max_len=16)
        np.testing.assert_array_equal(out[b], alone[0])


def test_changing_temperature_or_top_p_does_not_recompile():
    from phd_jax.sampling import decode_loop

    cfg = tiny_config("phd", 2)
    params = phd_jax.init_params(cfg, 0)
    prompt = random_tokens(cfg, 1, 4)
    phd_jax.generate(params, cfg, prompt, 3, max_len=8, rng=1, temperature=0.7, top_p=0.9)
    before = decode_loop._cache_size()
    phd_jax.generate(params, cfg, prompt, 3, max_len=8, rng=2, temperature=1.3, top_p=0.5)
    assert decode_loop._cache_size() == before


def test_generate_rejects_out_of_range_prompt():
    cfg = tiny_config()
    with pytest.raises(ValueError, match=r"contains id 70"):
        phd_jax.generate(phd_jax.init_params(cfg, 0), cfg, jnp.array([[1, 70]]), 2, max_len=8)
