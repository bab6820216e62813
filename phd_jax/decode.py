"""Inference state, prefill and one decode step (docs/spec.md sections 4 and 5).

PHD's inference promise: the persistent KV cache is a vanilla transformer's
(copy 0 of each position only) plus, for PHD-SWA/CSWA, a ring buffer of the
W most recent hidden decoding tokens. Hidden tokens of the current position
are computed, used and dropped within one step.

Prefill runs one forward pass over the prompt's original tokens plus the
hidden copies of only its last few positions (`ModelConfig.prefill_tail`,
docs/spec.md section 5), with the static block-sparse pattern of that token set: the
original stream costs exactly a vanilla prefill. Decode steps run the K copies
of one new token against the cache with a run-time mask from `masks.allowed`.
Prompts of different lengths use the fact that originals never attend to
hidden tokens: a vanilla pass fills the cache, then each prompt's tail runs
against it like a decode step.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from phd_jax.config import ModelConfig, check_config, check_max_len, check_tokens, check_tokens_per_sequence
from phd_jax.errors import as_bool, as_int, is_traced
from phd_jax.kv_cache import KVCache
from phd_jax.masks import Layout, allowed
from phd_jax.model import Transformer, check_params, rope_positions, run_layout


@flax.struct.dataclass
class DecodeState:
    """Everything decoding carries between steps; a pytree of fixed-size arrays.

    cache: the persistent `KVCache`, every layer's stacked (`[L, ...]`, heads before slots,
      the layout attention reads):
      k, v `[L, B, KVH, max_len * cached_copies, D]`, the original-token cache
      (cached_copies is 1, or K for the `naive` baseline which keeps every copy);
      window_k, window_v `[L, B, KVH, W, D]`, ring buffer of the W most recent
      hidden decoding tokens of earlier positions (W = 0 outside PHD-SWA/CSWA).
    window_hidx: `[B, W]` hidden-order index `h(n, s)` of each window slot, -1 = empty;
      position, copy and chunk follow from it.
    pos: `[B]` the next position of each sequence (= positions consumed).
    max_len, cfg: static metadata (part of the tree structure, not arrays): the
      cache length and the `ModelConfig` the state was made for, so that `decode_step`
      refuses a state from another model (`check_state`).
    """

    cache: KVCache
    window_hidx: jax.Array
    pos: jax.Array
    max_len: int = flax.struct.field(pytree_node=False)
    cfg: ModelConfig = flax.struct.field(pytree_node=False)

    @property
    def batch_size(self) -> int:
        return self.pos.shape[0]

    @property
    def cache_bytes(self) -> int:
        """Bytes of the persistent cache arrays (keys and values, originals and window)."""
        return self.cache.nbytes

    def _deprecated_cache_field(self, name: str):
        warnings.warn(
            f"DecodeState.{name} is deprecated: use DecodeState.cache.{name}", DeprecationWarning, stacklevel=3
        )
        return getattr(self.cache, name)

    @property
    def config(self) -> ModelConfig:
        """Deprecated: `cfg` (the name of a `ModelConfig` everywhere since 0.2)."""
        warnings.warn("DecodeState.config is deprecated: use DecodeState.cfg", DeprecationWarning, stacklevel=2)
        return self.cfg

    # The cache arrays were fields of the state before 0.2: read-only aliases.
    k = property(lambda self: self._deprecated_cache_field("k"), doc="Deprecated: `cache.k`.")
    v = property(lambda self: self._deprecated_cache_field("v"), doc="Deprecated: `cache.v`.")
    window_k = property(lambda self: self._deprecated_cache_field("window_k"), doc="Deprecated: `cache.window_k`.")
    window_v = property(lambda self: self._deprecated_cache_field("window_v"), doc="Deprecated: `cache.window_v`.")


def kv_cache_bytes(cfg: ModelConfig, batch: int, max_len: int) -> int:
    """Persistent KV cache bytes (docs/spec.md section 4): vanilla = phd = 2*max_len*KVH*D per
    layer and sequence, + 2*W*KVH*D for PHD-SWA/CSWA, x K for naive."""
    check_config(cfg)
    batch, max_len = as_int("batch", batch, 1), as_int("max_len", max_len, 1)
    slots = sum(math.prod(shape) for shape in cfg.cache_shapes(batch, max_len))
    return 2 * slots * cfg.compute_dtype.itemsize  # keys and values


def init_state(cfg: ModelConfig, batch: int, max_len: int) -> DecodeState:
    """An empty state (no positions consumed) for `batch` sequences of up to `max_len` positions."""
    check_config(cfg)
    batch = as_int("batch", batch, 1)
    max_len = check_max_len(cfg, max_len, 0, "")
    originals, window = cfg.cache_shapes(batch, max_len)
    dt = cfg.compute_dtype
    cache = KVCache(jnp.zeros(originals, dt), jnp.zeros(originals, dt), jnp.zeros(window, dt), jnp.zeros(window, dt))
    return DecodeState(
        cache=cache,
        window_hidx=jnp.full((batch, cfg.effective_window), -1, jnp.int32),
        pos=jnp.zeros((batch,), jnp.int32),
        max_len=max_len,
        cfg=cfg,
    )


# ---------------------------------------------------------------------------
# Checks of a state and of prompt lengths
# ---------------------------------------------------------------------------

# Fields that change nothing a decode step computes from a state (backend and tiling of
# the static patterns, how layers are stacked, init, the config's length bound).
_STATE_IRRELEVANT = ("attention", "block_q", "block_kv", "scan_layers", "remat", "init_std", "max_seq_len")


def check_state(state, cfg: ModelConfig, name: str = "state"):
    """A `DecodeState` made by `init_state`/`prefill` for `cfg` (the fields that matter)."""
    if not isinstance(state, DecodeState):
        raise TypeError(
            f"{name} must be a phd_jax.DecodeState (from prefill or init_state), got {type(state).__name__}"
        )
    made = state.cfg
    if made is not cfg and made != cfg:
        diff = [
            f"{f.name} (state {getattr(made, f.name)!r}, config {getattr(cfg, f.name)!r})"
            for f in dataclasses.fields(cfg)
            if f.name not in _STATE_IRRELEVANT and getattr(made, f.name) != getattr(cfg, f.name)
        ]
        if diff:
            raise ValueError(
                f"{name} was made for another model ({made.name}) than config ({cfg.name}): {', '.join(diff)}"
            )
    want, want_window = cfg.cache_shapes(state.pos.shape[0], state.max_len)
    if tuple(state.cache.k.shape) != want or tuple(state.cache.window_k.shape) != want_window:
        raise ValueError(
            f"{name} arrays do not have the shapes init_state makes for this config: "
            f"k {tuple(state.cache.k.shape)} (expected {want}), window_k "
            f"{tuple(state.cache.window_k.shape)}"
        )
    return state


def check_room(state):
    """The state's cache has room for one more position (eager: waits for the previous step)."""
    if is_traced(state.pos):
        checkify.debug_check(
            jnp.all(state.pos < state.max_len), f"the cache is full: a position does not fit max_len={state.max_len}"
        )
    elif int(state.pos.max()) >= state.max_len:
        raise ValueError(f"the cache is full: position {int(state.pos.max())} does not fit max_len={state.max_len}")


def check_lengths(lengths, batch: int, length: int):
    """True prompt lengths `[batch]` of a right-padded batch: integers in [1, length]."""
    lengths = jnp.asarray(lengths)
    if lengths.shape != (batch,) or not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise ValueError(
            f"lengths must be integers of shape ({batch},), got dtype {lengths.dtype}, shape {tuple(lengths.shape)}"
        )
    if is_traced(lengths):
        checkify.debug_check(
            jnp.all((lengths >= 1) & (lengths <= length)),
            f"lengths must be in [1, {length}] (the padded prompt length)",
        )
    elif lengths.min() < 1 or lengths.max() > length:
        raise ValueError(
            f"lengths must be in [1, {length}] (the padded prompt length), got {np.asarray(lengths).tolist()}"
        )
    return lengths


# ---------------------------------------------------------------------------
# Extend: run a few new tokens against the cache
# ---------------------------------------------------------------------------


def _extend_mask(cfg: ModelConfig, state: DecodeState, pos, copy, valid):
    """`[B, Q, S + W + Q]` mask of new tokens over [cache | window | new tokens], by `allowed`."""
    k, cc = cfg.repeat, cfg.cached_copies
    slot = jnp.arange(state.cache.k.shape[3])
    b = pos.shape[0]
    key_pos = [jnp.broadcast_to(slot // cc, (b, slot.size))]
    key_copy = [jnp.broadcast_to(slot % cc, (b, slot.size))]
    key_valid = [slot[None, :] < (state.pos * cc)[:, None]]  # written before this step
    if cfg.effective_window:
        h = state.window_hidx
        key_pos.append(h // (k - 1))
        key_copy.append(h % (k - 1) + 1)
        key_valid.append(h >= 0)
    key_pos.append(pos)
    key_copy.append(jnp.broadcast_to(copy, pos.shape))
    key_valid.append(valid)
    key_pos, key_copy, key_valid = (jnp.concatenate(a, axis=1) for a in (key_pos, key_copy, key_valid))
    ok = allowed(
        cfg.variant,
        pos[:, :, None],
        jnp.broadcast_to(copy, pos.shape)[:, :, None],
        key_pos[:, None, :],
        key_copy[:, None, :],
        k,
        cfg.effective_window,
        cfg.effective_chunk,
    )
    return ok & key_valid[:, None, :]


def _extend(params, cfg: ModelConfig, state: DecodeState, ids, pos, copy: np.ndarray, valid, out_rows):
    """Run new tokens `(pos [B, Q], copy [Q] static)` through all layers against `state`.

    Returns logits at `out_rows` and the new tokens' keys/values `[L, B, Q, KVH, D]`.
    """
    mask = _extend_mask(cfg, state, pos, copy, valid)
    logits, (new_k, new_v) = Transformer(cfg, mode="extend").apply(
        {"params": params}, ids, rope_positions(cfg, pos, copy), out_rows, mask, state.cache
    )
    return logits, new_k, new_v


def _write(cfg: ModelConfig, state: DecodeState, new_k, new_v, pos, copy: np.ndarray, valid):
    """Store the new tokens: cached copies into the cache, the newest hidden ones into the window.

    new_k/new_v `[L, B, Q, KVH, D]`; the state's arrays are `[L, B, KVH, slots, D]`, so an
    update indexed by (sequence, slot) is laid out `[B, Q, L, KVH, D]` (numpy's rule for
    advanced indices split by a slice)."""
    cc, w = cfg.cached_copies, cfg.effective_window
    rows = jnp.arange(pos.shape[0])[:, None]
    cached = np.nonzero(copy < cc)[0]
    k, v = state.cache.k, state.cache.v
    updates = lambda x, idx: x[:, :, idx].transpose(1, 2, 0, 3, 4)  # noqa: E731
    if cached.size:
        slots = jnp.where(valid[:, cached], pos[:, cached] * cc + copy[cached], k.shape[3])
        k = k.at[:, rows, :, slots].set(updates(new_k, cached), mode="drop")
        v = v.at[:, rows, :, slots].set(updates(new_v, cached), mode="drop")
    wk, wv, whidx = state.cache.window_k, state.cache.window_v, state.window_hidx
    hidden = np.nonzero(copy >= cc)[0][-w:] if w else np.zeros(0, int)
    if hidden.size:  # new tokens come in hidden order, so these are the newest <= W
        hidx = pos[:, hidden] * (cfg.repeat - 1) + (copy[hidden] - 1)
        slots = hidx % w
        wk = wk.at[:, rows, :, slots].set(updates(new_k, hidden))
        wv = wv.at[:, rows, :, slots].set(updates(new_v, hidden))
        whidx = whidx.at[rows, slots].set(jnp.where(valid[:, hidden], hidx, -1))
    return state.replace(cache=KVCache(k, v, wk, wv), window_hidx=whidx)


# ---------------------------------------------------------------------------
# Prefill
# ---------------------------------------------------------------------------


def prefill_layout(cfg: ModelConfig, prompt_len: int) -> Layout:
    """The static token set of prefill: the cached stream (originals; naive: every copy)
    plus the hidden copies of the last `prefill_tail` positions (docs/spec.md section 5)."""
    if not cfg.is_phd:  # vanilla and naive: every token is cached
        return Layout.for_config(cfg, prompt_len, "paper")
    return Layout.for_config(cfg, prompt_len, "kernel", hidden_from=prompt_len - cfg.prefill_tail(prompt_len))


def prefill_token_counts(cfg: ModelConfig, prompt_len: int) -> dict:
    """Tokens an (equal-length) prefill runs through the layers: `cached` (originals, or
    every copy for naive) and `hidden` (the tail's hidden decoding tokens)."""
    _, copy = prefill_layout(cfg, prompt_len).tokens
    return {"cached": int((copy < cfg.cached_copies).sum()), "hidden": int((copy >= cfg.cached_copies).sum())}


@functools.partial(jax.jit, static_argnames=("cfg", "max_len", "ragged"))
def prefill_unchecked(params, cfg: ModelConfig, tokens, lengths, max_len: int, ragged: bool):
    """`prefill`'s jitted computation without its argument checks (`prefill` checks, then calls
    this): for callers that time or batch it and checked their arguments once."""
    b, t = tokens.shape
    state = init_state(cfg, b, max_len)
    if ragged:
        return _prefill_ragged(params, cfg, state, tokens, lengths)
    # One pass over a static token set, with its static block-sparse pattern.
    layout = prefill_layout(cfg, t)
    pos, copy = layout.tokens
    logits, (k, v) = run_layout(params, cfg, layout, tokens, np.array([layout.size - 1]), True)
    pos_b = jnp.broadcast_to(pos, (b, pos.size))
    state = _write(cfg, state, k, v, pos_b, copy, jnp.ones(pos_b.shape, bool))
    return logits[:, 0], state.replace(pos=lengths.astype(jnp.int32))


def _prefill_ragged(params, cfg: ModelConfig, state, tokens, lengths):
    """Prompts of different lengths (right-padded): the tail is per sequence, so run
    (1) the original-token stream, a vanilla model, with the static causal pattern
    (padding after a prompt is never attended), then (2) each prompt's tail of
    hidden copies against that cache, like a decode step."""
    b, t = tokens.shape
    kind = "paper" if cfg.cached_copies > 1 else "originals"  # naive caches every copy
    layout = Layout.for_config(cfg, t, kind)
    last = (lengths - 1) * cfg.cached_copies + cfg.cached_copies - 1
    out_rows = np.zeros((b, 0), np.int32) if cfg.is_phd else last[:, None]
    logits, (k, v) = run_layout(params, cfg, layout, tokens, out_rows, True)
    state = state.replace(
        cache=state.cache._replace(
            k=jax.lax.dynamic_update_slice_in_dim(state.cache.k, k.swapaxes(2, 3), 0, axis=3),
            v=jax.lax.dynamic_update_slice_in_dim(state.cache.v, v.swapaxes(2, 3), 0, axis=3),
        ),
        pos=lengths.astype(jnp.int32),
    )
    if not cfg.is_phd:
        return logits[:, 0], state
    tail = cfg.prefill_tail(t, ragged=True)
    copy = np.tile(np.arange(1, cfg.repeat), tail)
    rel = np.repeat(np.arange(tail) - tail, cfg.repeat - 1)
    pos = lengths[:, None].astype(jnp.int32) + rel[None, :]
    valid = pos >= 0
    ids = jnp.take_along_axis(tokens, jnp.maximum(pos, 0), axis=1)
    logits, new_k, new_v = _extend(params, cfg, state, ids, pos, copy, valid, np.array([copy.size - 1]))
    return logits[:, 0], _write(cfg, state, new_k, new_v, pos, copy, valid)


def prefill(params, cfg: ModelConfig, tokens, max_len: int | None = None, lengths=None):
    """Run a prompt; return (logits of its last position `[B, vocab]`, DecodeState).

    tokens `[B, T]`. Prompts of different lengths: pass `lengths [B]` and pad
    on the right (padding after `lengths[b]` is ignored). `max_len` (default
    `cfg.max_seq_len`) fixes the cache size for the whole generation.
    """
    check_config(cfg)
    check_params(params, cfg)
    tokens = jnp.asarray(tokens)
    check_tokens(cfg, tokens)
    b, t = tokens.shape
    max_len = check_max_len(cfg, max_len, t, f"a prompt of length {t}")
    ragged = lengths is not None
    if ragged:
        lengths = check_lengths(lengths, b, t)
    else:
        lengths = jnp.full((b,), t, jnp.int32)
    check_tokens_per_sequence(
        cfg,
        t * cfg.cached_copies + cfg.prefill_tail(t, ragged) * (cfg.repeat - 1),
        f"prefill of {t} positions",
    )
    return prefill_unchecked(params, cfg, tokens, lengths, max_len, ragged)


# ---------------------------------------------------------------------------
# Decode
# ---------------------------------------------------------------------------


def step(params, cfg: ModelConfig, state: DecodeState, tokens):
    """One new token per sequence: its K copies in parallel through every layer.

    The unchecked step, for use inside `jit`/`scan` (`generate`); `decode_step` is the
    checked, jitted entry point.
    """
    k = cfg.repeat
    copy = np.arange(k)
    pos = jnp.broadcast_to(state.pos[:, None], (tokens.shape[0], k))
    valid = jnp.ones(pos.shape, bool)
    ids = jnp.broadcast_to(tokens[:, None], pos.shape)
    logits, new_k, new_v = _extend(params, cfg, state, ids, pos, copy, valid, np.array([k - 1]))
    state = _write(cfg, state, new_k, new_v, pos, copy, valid)
    return logits[:, 0], state.replace(pos=state.pos + 1)


_decode_step_donating = jax.jit(step, static_argnums=1, donate_argnums=2)
_decode_step_copying = jax.jit(step, static_argnums=1)


def decode_step(params, cfg: ModelConfig, state: DecodeState, tokens, *, donate: bool = True):
    """Feed one token per sequence (`tokens [B]`); return (logits `[B, vocab]`, new state).

    By default the input state's buffers are donated, so the cache is updated in
    place rather than copied every step: use the returned state. Pass
    `donate=False` to keep the input state (e.g. to branch several continuations
    from one prompt). Inside your own `jit`/`scan`, call it freely: donation
    only applies to this eager entry point.
    """
    check_config(cfg)
    check_params(params, cfg)
    check_state(state, cfg)
    donate = as_bool("donate", donate)
    tokens = jnp.asarray(tokens)
    if tokens.shape != state.pos.shape:
        raise ValueError(
            f"tokens must have shape {tuple(state.pos.shape)} (one per sequence: the "
            f"state holds batch={state.batch_size}), got {tuple(tokens.shape)}"
        )
    check_tokens(cfg, tokens[:, None])
    check_room(state)
    return (_decode_step_donating if donate else _decode_step_copying)(params, cfg, state, tokens)
