"""Prefill + decode against the full forward pass, the cache contract, and prefill cost."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import max_diff, named_config, random_tokens, state_for_comparison, tiny_config

import phd_jax
from phd_jax.decode import prefill_layout, prefill_unchecked
from phd_jax.masks import Layout
from phd_jax.model import run_layout

fwd = jax.jit(phd_jax.forward, static_argnums=1)


def _stepwise_diffs(params, cfg, tokens, prompt_len, max_len):
    """Max |logit diff| to `forward` after prefill of `prompt_len` tokens, then after each decode step."""
    full = fwd(params, cfg, tokens)
    logits, state = phd_jax.prefill(params, cfg, tokens[:, :prompt_len], max_len=max_len)
    diffs = [max_diff(logits, full[:, prompt_len - 1])]
    for n in range(prompt_len, tokens.shape[1]):
        logits, state = phd_jax.decode_step(params, cfg, state, tokens[:, n])
        diffs.append(max_diff(logits, full[:, n]))
    return diffs, state


def _grid():
    """Every variant with K in {1,2,3}, W in {0,1,4}, C in {2,3} (where the variant has them)."""
    yield dict(variant="vanilla", repeat=1)
    for k in (1, 2, 3):
        yield dict(variant="naive", repeat=k)
        yield dict(variant="phd", repeat=k)
        for w in (0, 1, 4):
            yield dict(variant="phd_swa", repeat=k, window=w)
            for c in (2, 3):
                yield dict(variant="phd_cswa", repeat=k, window=w, chunk=c)


GRID = list(_grid())


@pytest.mark.parametrize("kw", GRID, ids=[tiny_config(**kw).name for kw in GRID])
def test_prefill_then_decode_equals_forward(kw):
    """Prompt of 10 positions (longer than every prefill tail here, so the tail is really cut;
    ends inside a chunk of 3), then 6 decode steps across chunk boundaries: with W = 4 and
    K-1 = 2 hidden tokens per step the window ring buffer wraps around several times."""
    cfg = tiny_config(**kw)
    assert cfg.prefill_tail(10) < 10 or not cfg.is_phd
    params = phd_jax.init_params(cfg, 0)
    diffs, state = _stepwise_diffs(params, cfg, random_tokens(cfg, 2, 16, seed=1), 10, 20)
    assert max(diffs) <= 1e-4, diffs
    assert np.asarray(state.pos).tolist() == [16, 16]


def _expected_state(params, cfg, tokens, max_len):
    """The decode state read off the full parallel forward pass (dense, paper layout)."""
    t, k, cc, w = tokens.shape[1], cfg.repeat, cfg.cached_copies, cfg.effective_window
    lay = Layout.for_config(cfg.replace(attention="dense"), t, "paper")
    pos, copy = lay.tokens
    _, (keys, values) = run_layout(params, cfg.replace(attention="dense"), lay, tokens, lay.logit_rows, collect_kv=True)
    state = phd_jax.init_state(cfg, tokens.shape[0], max_len)
    cached = np.nonzero(copy < cc)[0]
    heads_first = lambda x: x.swapaxes(2, 3)  # noqa: E731  [L, B, N, KVH, D] -> the state's layout
    cache = state.cache
    state = state.replace(
        cache=cache._replace(
            k=cache.k.at[:, :, :, : t * cc].set(heads_first(keys[:, :, cached])),
            v=cache.v.at[:, :, :, : t * cc].set(heads_first(values[:, :, cached])),
        ),
        pos=jnp.full_like(state.pos, t),
    )
    if w and t * (k - 1) > 0:
        hidx = pos * (k - 1) + copy - 1
        last = [i for i in np.nonzero(copy > 0)[0] if hidx[i] > t * (k - 1) - 1 - w]
        slots = hidx[last] % w
        cache = state.cache
        state = state.replace(
            cache=cache._replace(
                window_k=cache.window_k.at[:, :, :, slots].set(heads_first(keys[:, :, last])),
                window_v=cache.window_v.at[:, :, :, slots].set(heads_first(values[:, :, last])),
            ),
            window_hidx=state.window_hidx.at[:, slots].set(hidx[last]),
        )
    return state


@pytest.mark.parametrize(
    "name", ["vanilla", "naive-3", "PHD-3", "PHD-SWA-3-4-inf", "PHD-SWA-2-5-inf", "PHD-CSWA-3-4-3", "PHD-CSWA-2-4-4"]
)
def test_prefill_state_equals_forward_and_single_steps(name):
    cfg = named_config(name)
    params = phd_jax.init_params(cfg, 0)
    t = 14  # longer than every prefill tail here
    assert cfg.prefill_tail(t) < t or not cfg.is_phd
    tokens = random_tokens(cfg, 2, t, seed=2)
    expected = state_for_comparison(cfg, _expected_state(params, cfg, tokens, 20))
    _, prefilled = phd_jax.prefill(params, cfg, tokens, max_len=20)
    stepped = phd_jax.init_state(cfg, 2, 20)
    for n in range(t):
        _, stepped = phd_jax.decode_step(params, cfg, stepped, tokens[:, n])
    for got in (prefilled, stepped):
        got = state_for_comparison(cfg, got)
        assert jax.tree.structure(got) == jax.tree.structure(expected)
        assert max_diff(got, expected) <= 1e-5
    if cfg.effective_window:  # the compared window really holds live entries
        assert int((state_for_comparison(cfg, prefilled).window_hidx >= 0).sum()) > 0


@pytest.mark.parametrize("name", ["vanilla", "naive-2", "PHD-3", "PHD-SWA-3-4-inf", "PHD-CSWA-3-4-3"])
def test_ragged_prompts_with_lengths(name):
    cfg = named_config(name)
    params = phd_jax.init_params(cfg, 0)
    tokens = random_tokens(cfg, 3, 12, seed=4)
    lengths = jnp.array([7, 2, 9])
    padded = jnp.where(jnp.arange(9)[None] < lengths[:, None], tokens[:, :9], 0)
    logits, state = phd_jax.prefill(params, cfg, padded, max_len=16, lengths=lengths)
    outs = [logits]
    for step in range(3):
        nxt = tokens[jnp.arange(3), lengths + step]
        logit, state = phd_jax.decode_step(params, cfg, state, nxt)
        outs.append(logit)
    for b in range(3):
        n = int(lengths[b])
        ref = fwd(params, cfg, tokens[b : b + 1, : n + 3])[0, n - 1 :]
        got = jnp.stack([o[b] for o in outs])
        assert max_diff(got, ref) <= 1e-4, (name, b)
    # The state of each row equals that of its own, unpadded prompt.
    _, ragged = phd_jax.prefill(params, cfg, padded, max_len=16, lengths=lengths)
    ragged = state_for_comparison(cfg, ragged)
    for b in range(3):
        _, alone = phd_jax.prefill(params, cfg, tokens[b : b + 1, : int(lengths[b])], max_len=16)
        alone = state_for_comparison(cfg, alone)
        row = jax.tree.map(lambda x: x[:, b : b + 1] if x.ndim == 5 else x[b : b + 1], ragged)
        assert max_diff(row, alone) <= 1e-5, (name, b)


@pytest.mark.parametrize("repeat,window", [(2, 3), (3, 4)])
def test_one_position_less_of_prefill_tail_is_not_exact(monkeypatch, repeat, window):
    """Spec section 5: L*w + 1 positions are needed; with one fewer the result changes."""
    cfg = tiny_config("phd_swa", repeat, window, init_std=0.2, vocab_size=59)  # tail 7 or 5 < 12
    params = phd_jax.init_params(cfg, 0)
    tokens = random_tokens(cfg, 2, 12, seed=6)
    ref_logits = fwd(params, cfg, tokens)[:, -1]
    expected = state_for_comparison(cfg, _expected_state(params, cfg, tokens, 16))
    logits, state = phd_jax.prefill(params, cfg, tokens, max_len=16)
    assert max_diff(logits, ref_logits) <= 1e-4
    assert max_diff(state_for_comparison(cfg, state), expected) <= 1e-5
    exact = phd_jax.ModelConfig.prefill_tail
    monkeypatch.setattr(phd_jax.ModelConfig, "prefill_tail", lambda self, *a, **k: exact(self, *a, **k) - 1)
    short = cfg.replace(init_std=0.20001)  # a new static config: compiled with the short tail
    logits, state = phd_jax.prefill(params, short, tokens, max_len=16)
    assert max(max_diff(logits, ref_logits), max_diff(state_for_comparison(cfg, state), expected)) > 1e-3


@pytest.mark.parametrize(
    "option",
    [
        dict(position_mode="flat"),
        dict(scan_layers=False),
        dict(remat="full"),
        dict(attention="dense"),
        dict(attention="splash", block_q=128, block_kv=128),
    ],
)
def test_prefill_and_decode_with_model_options(option):
    cfg = tiny_config("phd_cswa", 3, 4, 3, **option)
    params = phd_jax.init_params(cfg, 0)
    diffs, _ = _stepwise_diffs(params, cfg, random_tokens(cfg, 2, 12, seed=7), 8, 16)
    assert max(diffs) <= 1e-4, diffs


def test_bfloat16_prefill_and_decode():
    """Spec: in bfloat16 compare argmax and a loose bound."""
    cfg = tiny_config("phd_swa", 3, 4, init_std=0.2)
    params = phd_jax.init_params(cfg, 0)
    tokens = random_tokens(cfg, 2, 12, seed=8)
    ref = fwd(params, cfg, tokens)  # float32
    bf = cfg.replace(dtype="bfloat16")
    logits, state = phd_jax.prefill(params, bf, tokens[:, :8], max_len=16)
    outs = [logits]
    for n in range(8, 12):
        logits, state = phd_jax.decode_step(params, bf, state, tokens[:, n])
        outs.append(logits)
    got = jnp.stack(outs, axis=1)
    assert state.cache.k.dtype == jnp.bfloat16
    assert max_diff(got, ref[:, 7:]) < 0.1
    assert float(jnp.mean(jnp.argmax(got, -1) == jnp.argmax(ref[:, 7:], -1))) >= 0.8


@pytest.mark.parametrize("name", ["vanilla", "naive-3", "PHD-2", "PHD-5", "PHD-SWA-3-16-inf", "PHD-CSWA-4-16-32"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cache_size_is_the_spec_formula(name, dtype):
    cfg = phd_jax.ModelConfig.from_name(
        name,
        num_layers=3,
        d_model=64,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        mlp_dim=64,
        vocab_size=50,
        max_seq_len=64,
        dtype=dtype,
    )
    batch, max_len = 2, 40
    item = jnp.dtype(dtype).itemsize
    vanilla = 2 * max_len * cfg.num_kv_heads * cfg.head_dim
    per_layer = {
        "vanilla": vanilla,
        "phd": vanilla,
        "naive": cfg.repeat * vanilla,
        "phd_swa": vanilla + 2 * cfg.window * cfg.num_kv_heads * cfg.head_dim,
        "phd_cswa": vanilla + 2 * cfg.window * cfg.num_kv_heads * cfg.head_dim,
    }[cfg.variant]
    want = per_layer * cfg.num_layers * batch * item
    assert phd_jax.kv_cache_bytes(cfg, batch, max_len) == want
    params = phd_jax.init_params(cfg, 0)
    _, state = phd_jax.prefill(params, cfg, random_tokens(cfg, batch, 10), max_len=max_len)
    assert state.cache_bytes == want
    assert state.cache.k.shape == (cfg.num_layers, batch, 2, max_len * cfg.cached_copies, 16)
    if cfg.variant == "phd":  # whatever K is, exactly a vanilla transformer's cache
        assert want == phd_jax.kv_cache_bytes(cfg.replace(variant="vanilla", repeat=1), batch, max_len)


@pytest.mark.parametrize("name", ["PHD-3", "PHD-SWA-3-4-inf", "PHD-CSWA-2-4-2"])
def test_cached_originals_equal_a_vanilla_model(name):
    cfg = named_config(name)
    vanilla = cfg.replace(variant="vanilla", repeat=1, window=0, chunk=None)
    params = phd_jax.init_params(cfg, 0)
    tokens = random_tokens(cfg, 2, 9)
    _, s = phd_jax.prefill(params, cfg, tokens[:, :6], max_len=12)
    _, s0 = phd_jax.prefill(params, vanilla, tokens[:, :6], max_len=12)
    for n in range(6, 9):  # also after decode steps, which run K copies at once
        _, s = phd_jax.decode_step(params, cfg, s, tokens[:, n])
        _, s0 = phd_jax.decode_step(params, vanilla, s0, tokens[:, n])
    assert max_diff(s.cache.k[:, :, :, :9], s0.cache.k[:, :, :, :9]) <= 1e-5
    assert max_diff(s.cache.v[:, :, :, :9], s0.cache.v[:, :, :, :9]) <= 1e-5


def _prefill_flops(cfg, t, max_len=64):
    params = phd_jax.init_params(cfg, 0)
    tokens = random_tokens(cfg, 1, t)
    cost = (
        prefill_unchecked.lower(params, cfg, tokens, jnp.full((1,), t, jnp.int32), max_len, False)
        .compile()
        .cost_analysis()
    )
    return float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])


@pytest.mark.parametrize(
    "kw,T,tail",
    [
        (dict(variant="phd", repeat=2), 48, 1),  # the last position only
        (dict(variant="phd", repeat=4), 48, 1),
        (dict(variant="phd_swa", repeat=4, window=6), 24, 5),  # L*w + 1 = 2*2 + 1
        (dict(variant="phd_swa", repeat=4, window=6), 48, 5),  # ... whatever T is
        (dict(variant="phd_cswa", repeat=4, window=24, chunk=8), 48, 8),  # one chunk (< L*w + 1 = 17)
        (dict(variant="phd_cswa", repeat=4, window=24, chunk=8), 44, 4),  # the last, partial chunk
    ],
)
def test_prefill_work_is_vanilla_plus_the_spec_tail(kw, T, tail):
    """XLA's FLOP count: prefill = vanilla prefill + `tail` positions' hidden copies, no more."""
    hidden = tail * (kw["repeat"] - 1)
    # Dense attention costs the same for any mask, so the count is exactly "more tokens":
    # PHD prefill of T positions = vanilla prefill of T + hidden positions.
    cfg, vanilla = tiny_config(**kw, attention="dense"), tiny_config("vanilla", 1, attention="dense")
    assert cfg.prefill_tail(T) == tail
    want = _prefill_flops(vanilla, T + hidden)
    assert abs(_prefill_flops(cfg, T) - want) <= 0.01 * want
    # The block-sparse kernel computes whole tiles inside loops, which XLA's count cannot see:
    # count its tiles. The hidden copies add only the tiles of the query blocks that hold the
    # tail's hidden rows, not the hidden copies of every position.
    cfg, vanilla = tiny_config(**kw), tiny_config("vanilla", 1)
    tiles = lambda c: prefill_layout(c, T).pattern(c.block_q, c.block_kv).num_nonempty  # noqa: E731
    n = T + hidden
    blocks_with_hidden = -(-n // cfg.block_q) - T // cfg.block_q
    assert 0 < tiles(cfg) - tiles(vanilla) <= blocks_with_hidden * -(-n // cfg.block_kv)


@pytest.mark.parametrize(
    "name,T,hidden",
    [("vanilla", 20, 0), ("naive-3", 20, 0), ("PHD-3", 20, 2), ("PHD-SWA-3-4-inf", 20, 10), ("PHD-CSWA-3-4-3", 20, 4)],
)
def test_prefill_token_counts(name, T, hidden):
    cfg = named_config(name)
    assert phd_jax.prefill_token_counts(cfg, T) == {"cached": T * cfg.cached_copies, "hidden": hidden}


def test_prefill_is_far_cheaper_than_the_parallel_forward():
    vanilla = _prefill_flops(tiny_config("vanilla", 1), 32)
    assert _prefill_flops(tiny_config("naive", 4), 32) > 3 * vanilla  # every copy is cached
    params = phd_jax.init_params(tiny_config(), 0)
    tokens = random_tokens(tiny_config(), 1, 32)
    full = jax.jit(phd_jax.forward, static_argnums=1).lower(params, tiny_config("phd", 4), tokens)
    cost = full.compile().cost_analysis()
    full_flops = float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])
    assert full_flops > 3 * _prefill_flops(tiny_config("phd", 4), 32)


@pytest.mark.parametrize(
    "call,message",
    [
        (
            lambda p, c: phd_jax.prefill(p, c, jnp.zeros((1, 20), jnp.int32), max_len=16),
            r"a prompt of length 20 needs 20 positions but the cache holds max_len=16",
        ),
        (
            lambda p, c: phd_jax.prefill(p, c, jnp.zeros((1, 4), jnp.int32), max_len=100),
            r"max_len=100 exceeds ModelConfig.max_seq_len=64",
        ),
        (
            lambda p, c: phd_jax.prefill(p, c, jnp.full((1, 4), 99, jnp.int32), max_len=8),
            r"contains id 99, outside the allowed range \[0, vocab_size=61\)",
        ),
        (
            lambda p, c: phd_jax.prefill(p, c, jnp.zeros((2, 4), jnp.int32), max_len=8, lengths=[0, 4]),
            r"lengths must be in \[1, 4\]",
        ),
        (
            lambda p, c: phd_jax.prefill(p, c, jnp.zeros((2, 4), jnp.int32), max_len=8, lengths=[3]),
            r"lengths must be integers of shape \(2,\), got dtype int32, shape \(1,\)",
        ),
    ],
)
def test_prefill_errors(call, message):
    cfg = tiny_config()
    with pytest.raises(ValueError, match=message):
        call(phd_jax.init_params(cfg, 0), cfg)


def test_decode_errors_when_cache_is_full_or_token_bad():
    cfg = tiny_config()
    params = phd_jax.init_params(cfg, 0)
    _, state = phd_jax.prefill(params, cfg, jnp.zeros((2, 4), jnp.int32), max_len=5)
    with pytest.raises(ValueError, match=r"contains id 61"):
        phd_jax.decode_step(params, cfg, state, jnp.array([1, 61]))
    with pytest.raises(ValueError, match=r"tokens must have shape \(2,\)"):
        phd_jax.decode_step(params, cfg, state, jnp.array([1, 2, 3]))
    _, state = phd_jax.decode_step(params, cfg, state, jnp.array([1, 2]))
    with pytest.raises(ValueError, match=r"the cache is full: position 5 does not fit max_len=5"):
        phd_jax.decode_step(params, cfg, state, jnp.array([1, 2]))


def test_state_holds_a_kv_cache_and_old_field_names_warn():
    """`DecodeState.cache` is the model's `KVCache`; the fields it replaced still read, with a warning."""
    from phd_jax.kv_cache import KVCache

    cfg = tiny_config("phd_swa", 3, 4)
    state = phd_jax.init_state(cfg, 2, 8)
    assert isinstance(state.cache, KVCache) and state.cache_bytes == state.cache.nbytes
    for name in ("k", "v", "window_k", "window_v"):
        with pytest.warns(DeprecationWarning, match=f"DecodeState.{name} is deprecated"):
            assert getattr(state, name) is getattr(state.cache, name)
