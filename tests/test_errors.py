"""Issue 12: every unusual input gets the right result or a one-line error naming the argument.

Each case either works (numpy / JAX scalars wherever Python numbers are accepted) or raises a
ValueError / TypeError whose message names the argument and mentions no Flax / JAX internals.
Mismatching parameters are given as `jax.ShapeDtypeStruct` trees where the check must fire
before any computation, so these tests compile only a handful of tiny functions.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_config

import phd_jax
from phd_jax.decode import check_state
from phd_jax.model import param_shapes
from phd_jax.params import _params_mismatch
from phd_jax.sampling import decode_loop, sample_token

INTERNALS = ("flax", "tracer", "scope", "jaxlib", "pjit", "non-hashable", "traceback")


def raises(error, match, fn, *args, **kwargs):
    """`fn(*args, **kwargs)` raises `error` matching `match`, in one line, without internals."""
    with pytest.raises(error, match=match) as info:
        fn(*args, **kwargs)
    text = str(info.value)
    assert "\n" not in text, text
    assert not any(word in text.lower() for word in INTERNALS), text
    return text


@pytest.fixture(scope="module")
def model():
    cfg = tiny_config()
    return cfg, phd_jax.init_params(cfg, 0)


# ---- 1. configs -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (dict(tie_embeddings="no"), TypeError, r"ModelConfig.tie_embeddings='no' is invalid: must be True or False"),
        (dict(scan_layers="False"), TypeError, r"ModelConfig.scan_layers='False' is invalid"),
        (dict(qk_norm=0), TypeError, r"ModelConfig.qk_norm=0 is invalid: allowed: none, head, projection \(or a bool"),
        (dict(rope_theta="1e4"), TypeError, r"ModelConfig.rope_theta='1e4' is invalid: must be a finite number > 0"),
        (dict(init_std=None), TypeError, r"ModelConfig.init_std=None is invalid"),
        (dict(rope_theta=math.inf), ValueError, r"ModelConfig.rope_theta=inf is invalid: must be a finite number"),
        (dict(norm_eps=math.nan), ValueError, r"ModelConfig.norm_eps=nan is invalid"),
        (dict(d_model="64"), TypeError, r"ModelConfig.d_model='64' is invalid: must be an integer >= 1"),
        (dict(variant=3), TypeError, r"ModelConfig.variant=3 is invalid: allowed: vanilla"),
        (dict(dtype="int8"), ValueError, r"ModelConfig.dtype='int8' is invalid"),
        (
            dict(variant="phd", repeat=10**6),
            ValueError,
            r"ModelConfig.repeat=1000000 is invalid: one position alone needs K=1000000 tokens per sequence, "
            r"above the limit MAX_TOKENS_PER_SEQUENCE=65536",
        ),
    ],
)
def test_config_field_types_and_ranges(kwargs, error, message):
    text = raises(error, message, phd_jax.ModelConfig, **kwargs)
    assert isinstance(pytest.raises(phd_jax.ConfigError, phd_jax.ModelConfig, **kwargs).value, ValueError), (
        text
    )  # one exception type for every config error


def test_config_accepts_numpy_and_jax_scalars_and_stays_hashable():
    cfg = phd_jax.ModelConfig(
        d_model=np.int64(64),
        num_layers=np.int32(2),
        rope_theta=np.float32(1e4),
        norm_eps=jnp.float32(1e-6),
        tie_embeddings=np.bool_(False),
        variant="phd",
        repeat=np.int64(3),
        dtype=jnp.bfloat16,
    )
    ref = phd_jax.ModelConfig(
        d_model=64,
        num_layers=2,
        rope_theta=1e4,
        norm_eps=float(np.float32(1e-6)),
        tie_embeddings=False,
        variant="phd",
        repeat=3,
        dtype="bfloat16",
    )
    assert cfg == ref and hash(cfg) == hash(ref)
    assert type(cfg.d_model) is int and type(cfg.rope_theta) is float and cfg.tie_embeddings is False


@pytest.mark.parametrize("name,error", [(None, TypeError), (3, TypeError), ("PHD-X", ValueError)])
def test_from_name_checks_its_argument(name, error):
    raises(error, r"(from_name\(name\)|model name)", phd_jax.ModelConfig.from_name, name)


def test_too_many_tokens_per_sequence_is_refused_before_building_masks():
    cfg = tiny_config("phd", 2000, max_seq_len=64)  # 40 positions: 80000 tokens through the layers
    params = param_shapes(cfg)  # shapes only: nothing may run
    raises(
        ValueError,
        r"forward over 40 positions needs 80000 tokens per sequence .* "
        r"MAX_TOKENS_PER_SEQUENCE=65536",
        phd_jax.forward,
        params,
        cfg,
        jnp.zeros((1, 40), jnp.int32),
    )
    raises(
        ValueError,
        r"prefill of 40 positions needs",
        phd_jax.prefill,
        params,
        tiny_config("naive", 2000, max_seq_len=64),
        jnp.zeros((1, 40), jnp.int32),
    )


# ---- 2. parameters vs config -------------------------------------------------------------


@pytest.mark.parametrize(
    "other,fields",
    [
        (dict(d_model=64), r"d_model \(config 32, params 64\)"),
        (dict(vocab_size=99), r"vocab_size \(config 61, params 99\)"),
        (dict(num_layers=3), r"num_layers \(config 2, params 3\)"),
        (dict(tie_embeddings=False), r"tie_embeddings \(config True\).*unembed/kernel is unexpected"),
        (dict(mlp_dim=32), r"mlp_dim \(config 64, params 32\)"),
        (dict(num_kv_heads=4), r"num_kv_heads \(config 2, params 4\)"),
        (dict(qk_norm=True), r"qk_norm \(config 'none', params 'head'\)"),
        (dict(scan_layers=False), r"scan_layers \(config True, params False\)"),
    ],
)
def test_params_of_another_config_are_refused_naming_the_fields(other, fields):
    cfg = tiny_config()
    params = param_shapes(tiny_config(**other))
    tokens = jnp.zeros((1, 4), jnp.int32)
    raises(ValueError, r"^params do not fit the config: .*" + fields, phd_jax.forward, params, cfg, tokens)
    raises(ValueError, fields, phd_jax.prefill, params, cfg, tokens, max_len=8)
    raises(ValueError, fields, phd_jax.generate, params, cfg, tokens, 2, max_len=8)
    raises(
        ValueError, fields, phd_jax.decode_step, params, cfg, phd_jax.init_state(cfg, 1, 8), jnp.zeros((1,), jnp.int32)
    )
    raises(ValueError, fields, phd_jax.check_params, params, cfg)


def test_missing_leaf_wrapped_params_and_non_dict_params():
    cfg = tiny_config()
    params = param_shapes(cfg)
    raises(
        ValueError,
        r"final_norm/scale is missing",
        phd_jax.check_params,
        {k: v for k, v in params.items() if k != "final_norm"},
        cfg,
    )
    raises(ValueError, r"pass variables\['params'\]", phd_jax.check_params, {"params": params}, cfg)
    raises(TypeError, r"params must be a dict", phd_jax.check_params, [1, 2], cfg)


def test_param_check_runs_once_per_config_and_tree_not_per_call(model):
    cfg, params = model
    _params_mismatch.cache_clear()
    fwd = jax.jit(phd_jax.forward, static_argnums=1)
    for length in (3, 4):  # two traces of forward
        fwd(params, cfg, jnp.ones((1, length), jnp.int32))
    for _ in range(5):
        phd_jax.check_params(params, cfg)
    phd_jax.check_params(params, tiny_config("phd_swa", 3, 2))  # PHD adds no parameters: same check
    assert _params_mismatch.cache_info().misses == 1
    with pytest.raises(ValueError):
        phd_jax.check_params(param_shapes(tiny_config(d_model=64)), cfg)
    assert _params_mismatch.cache_info().misses == 2


# ---- 3. decode state vs config --------------------------------------------------------------


@pytest.mark.parametrize(
    "other,message",
    [
        (
            tiny_config("phd", 2),
            r"state was made for another model \(PHD-2\) than config \(PHD-3\): repeat \(state 2, config 3\)",
        ),
        (tiny_config("vanilla", 1), r"\(vanilla\) than config \(PHD-3\): variant \(state 'vanilla', config 'phd'\)"),
        (tiny_config("naive", 3), r"variant \(state 'naive', config 'phd'\)"),
        (tiny_config("phd_swa", 3, 2), r"window \(state 2, config 0\)"),
        (tiny_config(num_kv_heads=4), r"num_kv_heads \(state 4, config 2\)"),
        (tiny_config(rope_theta=500.0), r"rope_theta \(state 500.0, config 10000.0\)"),
    ],
)
def test_decode_step_refuses_a_state_from_another_config(model, other, message):
    cfg, params = model
    state = phd_jax.init_state(other, 2, 8)
    raises(ValueError, message, phd_jax.decode_step, params, cfg, state, jnp.zeros((2,), jnp.int32))


def test_decode_step_refuses_another_batch_and_non_states(model):
    cfg, params = model
    state = phd_jax.init_state(cfg, 3, 8)
    raises(
        ValueError,
        r"tokens must have shape \(3,\) \(one per sequence: the state holds batch=3\), got \(2,\)",
        phd_jax.decode_step,
        params,
        cfg,
        state,
        jnp.zeros((2,), jnp.int32),
    )
    raises(
        TypeError,
        r"state must be a phd_jax.DecodeState",
        phd_jax.decode_step,
        params,
        cfg,
        {"k": 1},
        jnp.zeros((2,), jnp.int32),
    )
    raises(
        TypeError,
        r"donate='yes' is invalid",
        phd_jax.decode_step,
        params,
        cfg,
        state,
        jnp.zeros((3,), jnp.int32),
        donate="yes",
    )
    # A state for another backend / tiling of the same model is fine.
    same = phd_jax.init_state(cfg.replace(attention="dense", block_q=32), 3, 8)
    check_state(same, cfg)


@pytest.mark.parametrize(
    "call,error,message",
    [
        (lambda c: phd_jax.init_state(c, 2, -1), ValueError, r"^max_len=-1 is invalid: must be an integer >= 1"),
        (lambda c: phd_jax.init_state(c, 0, 16), ValueError, r"^batch=0 is invalid: must be an integer >= 1"),
        (lambda c: phd_jax.init_state(c, 2, 100), ValueError, r"^max_len=100 exceeds ModelConfig.max_seq_len=64"),
        (lambda c: phd_jax.kv_cache_bytes(c, -2, 16), ValueError, r"^batch=-2 is invalid"),
        (lambda c: phd_jax.kv_cache_bytes(c, 2, 1.5), TypeError, r"^max_len=1.5 is invalid: must be an integer"),
        (
            lambda c: phd_jax.init_state({"d_model": 4}, 2, 8),
            TypeError,
            r"^config must be a phd_jax.ModelConfig, got dict",
        ),
    ],
)
def test_state_and_cache_size_arguments(call, error, message):
    raises(error, message, call, tiny_config())


def test_state_sizes_accept_numpy_integers():
    cfg = tiny_config()
    state = phd_jax.init_state(cfg, np.int64(2), np.int32(8))
    assert state.max_len == 8 and type(state.max_len) is int and state.batch_size == 2
    assert phd_jax.kv_cache_bytes(cfg, np.int64(2), np.int64(8)) == state.cache_bytes


# ---- 4. sampling ----------------------------------------------------------------------------

LOGITS = jnp.log(jnp.array([[0.1, 0.6, 0.3]]))


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (dict(temperature=-1.0), ValueError, r"^temperature=-1.0 is invalid: must be a finite number >= 0"),
        (dict(temperature=math.nan), ValueError, r"^temperature=nan is invalid"),
        (dict(temperature=math.inf), ValueError, r"^temperature=inf is invalid"),
        (dict(temperature="hot"), TypeError, r"^temperature='hot' is invalid"),
        (dict(temperature=1.0, top_p=0.0), ValueError, r"^top_p=0.0 is invalid: must be a finite number in \(0, 1\]"),
        (dict(temperature=1.0, top_p=1.5), ValueError, r"^top_p=1.5 is invalid"),
        (dict(temperature=1.0, top_k=4), ValueError, r"^top_k=4 is invalid: must be an integer in \[0, 3\]"),
        (dict(temperature=1.0, top_k=-1), ValueError, r"^top_k=-1 is invalid"),
        (dict(temperature=1.0, top_k=1.5), TypeError, r"^top_k=1.5 is invalid"),
    ],
)
def test_sample_token_checks_concrete_arguments(kwargs, error, message):
    raises(error, message, sample_token, LOGITS, jax.random.key(0), **kwargs)


@pytest.mark.parametrize("rng", [jax.random.key(3), jax.random.PRNGKey(3), 3, np.int64(3), jnp.int32(3)])
def test_sample_token_rng_forms_and_scalar_types(rng):
    got = sample_token(LOGITS, rng, np.float32(1.0), np.int64(2), jnp.float32(0.99))
    assert got.shape == (1,) and int(got[0]) in (1, 2)
    assert int(sample_token(LOGITS, rng, jnp.float32(0.0))[0]) == 1  # a JAX zero is greedy


def test_bad_rng_is_a_type_error():
    raises(TypeError, r"^rng='seed' is invalid: must be a PRNG key", sample_token, LOGITS, "seed", 1.0)


def test_traced_temperature_and_top_p_are_clamped_as_documented():
    f = jax.jit(lambda t, p: sample_token(jnp.tile(LOGITS, (64, 1)), jax.random.key(0), t, 0, p))
    for t, p in ((math.nan, 1.0), (-1.0, 1.0), (0.0, 1.0), (1.0, 0.0), (1.0, -3.0), (1.0, math.nan)):
        np.testing.assert_array_equal(f(t, p), 1)  # greedy / only the most likely token
    assert len(set(np.asarray(f(1.0, 1.0)).tolist())) > 1


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (dict(temperature=math.nan, rng=0), ValueError, r"^temperature=nan is invalid"),
        (dict(temperature=1.0), ValueError, r"^rng=None is invalid: sampling .* needs rng="),
        (dict(rng="x", temperature=1.0), TypeError, r"^rng='x' is invalid"),
        (dict(top_k=100), ValueError, r"^top_k=100 is invalid: must be an integer in \[0, 61\]"),
        (dict(pad_id=-1), ValueError, r"^pad_id=-1 is invalid: must be a token id in \[0, vocab_size=61\)"),
        (dict(eos_id=np.int64(70)), ValueError, r"^eos_id=70 is invalid"),
        (dict(max_len=8.0), TypeError, r"^max_len=8.0 is invalid: must be an integer"),
    ],
)
def test_generate_checks_its_arguments(model, kwargs, error, message):
    cfg, params = model
    raises(error, message, phd_jax.generate, params, cfg, jnp.ones((1, 3), jnp.int32), 2, **{"max_len": 8, **kwargs})
    raises(
        TypeError, r"^max_new_tokens='2' is invalid", phd_jax.generate, params, cfg, jnp.ones((1, 3), jnp.int32), "2"
    )


def test_generate_accepts_numpy_and_jax_scalars_without_recompiling(model):
    cfg, params = model
    prompt = jnp.ones((1, 3), jnp.int32)
    greedy = phd_jax.generate(params, cfg, prompt, 3, max_len=8)
    sampled = phd_jax.generate(params, cfg, prompt, 3, max_len=8, rng=5, temperature=0.8, top_k=7, top_p=0.9)
    compiled = decode_loop._cache_size()
    np.testing.assert_array_equal(
        phd_jax.generate(
            params, cfg, prompt, np.int64(3), max_len=np.int64(8), rng=np.int64(3), temperature=jnp.float32(0.0)
        ),
        greedy,
    )
    np.testing.assert_array_equal(
        phd_jax.generate(
            params,
            cfg,
            prompt,
            np.int32(3),
            max_len=8,
            rng=np.int64(5),
            temperature=jnp.float32(0.8),
            top_k=np.int64(7),
            top_p=np.float64(0.9),
        ),
        sampled,
    )
    assert decode_loop._cache_size() == compiled
    _, state = phd_jax.prefill(params, cfg, prompt, max_len=np.int64(8))
    assert state.max_len == 8
    np.testing.assert_array_equal(
        phd_jax.init_params(cfg, np.int64(0))["embed"]["embedding"], params["embed"]["embedding"]
    )


# ---- 5. under jit ------------------------------------------------------------------------------


def test_forward_with_a_dict_or_a_traced_config(model):
    cfg, params = model
    tokens = jnp.ones((1, 3), jnp.int32)
    raises(
        TypeError,
        r"^config must be a phd_jax.ModelConfig, got dict \(build one with",
        phd_jax.forward,
        params,
        {"vocab_size": 61},
        tokens,
    )
    raises(
        TypeError,
        r"^config is a traced value: .*jax.jit\(phd_jax.forward, static_argnums=1\)",
        jax.jit(phd_jax.forward),
        params,
        cfg,
        tokens,
    )
    raises(TypeError, r"^rng=1.5 is invalid", phd_jax.init_params, cfg, 1.5)


def test_out_of_range_ids_under_jit_are_clamped_and_the_checked_mode_raises(model):
    cfg, params = model
    fwd = jax.jit(phd_jax.forward, static_argnums=1)
    bad, clamped = jnp.array([[300, -5, 7]]), jnp.array([[60, 0, 7]])
    out = fwd(params, cfg, bad)
    assert np.isfinite(np.asarray(out)).all()
    np.testing.assert_array_equal(out, fwd(params, cfg, clamped))
    safe = phd_jax.checked(fwd)
    raises(
        ValueError, r"^tokens contains id -5, outside the allowed range \[0, vocab_size=61\)", safe, params, cfg, bad
    )
    raises(ValueError, r"^tokens contains id 300", safe, params, cfg, jnp.array([[3, 300, 7]]))
    np.testing.assert_array_equal(safe(params, cfg, clamped), out)
    raises(ValueError, r"^tokens contains id 61, outside", phd_jax.forward, params, cfg, jnp.array([[61]]))


def test_docs_errors_page_prints_what_it_shows():
    import contextlib
    import io
    import os
    import re

    page = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "errors.md")
    text = open(page).read()
    code, shown = re.search(r"```python\n(.*?)```\n\n```\n(.*?)```", text, re.S).groups()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "docs/errors.md", "exec"), {})
    assert out.getvalue() == shown


def test_checked_mode_reports_a_full_cache_that_jit_would_drop(model):
    cfg, params = model
    state = phd_jax.init_state(cfg, 1, 2).replace(pos=jnp.array([2], jnp.int32))
    token = jnp.array([1], jnp.int32)
    raises(
        ValueError,
        r"^the cache is full: position 2 does not fit max_len=2",
        phd_jax.decode_step,
        params,
        cfg,
        state,
        token,
    )
    raises(
        ValueError,
        r"^the cache is full: a position does not fit max_len=2",
        phd_jax.checked(phd_jax.decode_step),
        params,
        cfg,
        state,
        token,
        donate=False,
    )
