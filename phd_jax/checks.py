"""Argument checks shared by every entry point: one place, one message format.

Every check raises `ValueError` (a bad value) or `TypeError` (a wrong type) whose
message starts with the argument's name, says what was given and what is allowed,
and never mentions Flax or JAX internals:

    ModelConfig.d_model='64' is invalid: must be an integer >= 1 (got str)

Numpy and JAX scalars are accepted wherever Python numbers are (`np.int64(3)` is an
integer, `jnp.float32(0.5)` a float); booleans are never integers or floats.

Besides the scalar helpers this module holds the library's cross-argument checks:
the config argument itself (`check_config`), parameters vs config (`check_params`,
cached per config and tree structure), decode state vs config (`check_state`),
sampling arguments (`check_sampling`), PRNG keys (`as_rng`), token arrays
(`check_tokens`), the size limit of static masks (`MAX_TOKENS_PER_SEQUENCE`), and
the checked mode for compiled code (`checked`).

Higher layers (`model`, `decode`) are imported inside the functions that need them:
this module sits below everything else and may be imported by any of them.
"""

from __future__ import annotations

import functools
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

# Tokens one sequence may put through the layers in a static layout (forward: T*K;
# prefill: the originals plus the tail's hidden copies). The block patterns no longer need
# [N, N] memory (T = 65536, K = 4 builds in 31 MiB) and the blocksparse kernel's compile
# time and memory no longer grow with N (benchmarks/long_context.py), but the `dense`
# backend's mask still does not scale past this.
MAX_TOKENS_PER_SEQUENCE = 65536


class ConfigError(ValueError):
    """A configuration value or combination is invalid (the message names the key)."""


class ConfigTypeError(ConfigError, TypeError):
    """A configuration value has the wrong type (a `ConfigError` and a `TypeError`)."""


def fail(name: str, value, allowed: str, error=ValueError):
    """Raise `error("<name>=<value> is invalid: <allowed>")`."""
    raise error(f"{name}={_show(value)} is invalid: {allowed}")


def _show(value) -> str:
    if is_traced(value):
        return f"<traced {value.dtype}{list(value.shape)}>"
    text = repr(_scalar(value))
    return text if len(text) <= 80 else text[:77] + "..."


def _scalar(value):
    """A numpy / JAX 0-d value as the Python scalar it holds; anything else unchanged."""
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "shape") and hasattr(value, "dtype") and getattr(value, "shape", None) == ():
        try:
            return np.asarray(value).item()  # a concrete jax scalar
        except Exception:  # a tracer: leave it to the caller
            return value
    return value


def is_traced(value) -> bool:
    """True for a value that only exists inside a `jit`/`grad`/`scan` trace."""
    return isinstance(value, jax.core.Tracer)


def is_int(value) -> bool:
    value = _scalar(value)
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _type_error(error):
    """The exception for a wrong type, given the one for a bad value."""
    if error is ConfigError:
        return ConfigTypeError
    return TypeError if error is ValueError else error


def _got(value) -> str:
    if is_traced(value):
        return "got a traced value: it must be concrete, e.g. a static argument of jax.jit"
    return f"got {type(value).__name__}"


def as_int(name: str, value, low: int | None = None, high: int | None = None, error=ValueError) -> int:
    """`value` as a Python int in [low, high] (numpy integers accepted, bools refused)."""
    v = _scalar(value)
    if not is_int(v):
        fail(name, value, f"must be an integer{_range(low, high)} ({_got(value)})", _type_error(error))
    v = int(v)
    if (low is not None and v < low) or (high is not None and v > high):
        fail(name, value, f"must be an integer{_range(low, high)}", error)
    return v


def as_float(
    name: str,
    value,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    error=ValueError,
) -> float:
    """`value` as a finite Python float in the given range (ints and numpy floats accepted)."""
    v = _scalar(value)
    if low is not None and high is not None:
        span = f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        span = f" {'>' if low_open else '>='} {low:g}"
    elif high is not None:
        span = f" {'<' if high_open else '<='} {high:g}"
    else:
        span = ""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        fail(name, value, f"must be a finite number{span} ({_got(value)})", _type_error(error))
    v = float(v)
    if (
        not math.isfinite(v)
        or (low is not None and (v < low or (low_open and v == low)))
        or (high is not None and (v > high or (high_open and v == high)))
    ):
        fail(name, value, f"must be a finite number{span}", error)
    return v


def as_bool(name: str, value, error=ValueError) -> bool:
    """`value` as a bool: True/False (or numpy bools) only; strings and ints are refused."""
    v = _scalar(value)
    if not isinstance(v, (bool, np.bool_)):
        fail(name, value, f"must be True or False ({_got(value)})", _type_error(error))
    return bool(v)


def one_of(name: str, value, allowed, error=ValueError) -> str:
    """`value` if it is one of `allowed`, else a ValueError listing them."""
    if not isinstance(value, str) or value not in allowed:
        fail(
            name,
            value,
            f"allowed: {', '.join(map(str, allowed))}",
            error if isinstance(value, str) else _type_error(error),
        )
    return value


def _range(low, high) -> str:
    if low is not None and high is not None:
        return f" in [{low}, {high}]"
    if low is not None:
        return f" >= {low}"
    if high is not None:
        return f" <= {high}"
    return ""


# ---------------------------------------------------------------------------
# The config argument, PRNG keys, token arrays, sizes
# ---------------------------------------------------------------------------


def check_config(config, name: str = "config"):
    """`config` itself: a `ModelConfig`, and never a traced value (it is static under jit)."""
    from phd_jax.config import ModelConfig  # noqa: PLC0415 (config imports this module)

    if isinstance(config, ModelConfig):
        return config
    if is_traced(config):
        raise TypeError(
            f"{name} is a traced value: a ModelConfig must be a static argument under "
            f"jax.jit, e.g. jax.jit(phd_jax.forward, static_argnums=1)"
        )
    hint = " (build one with phd_jax.ModelConfig(**d))" if isinstance(config, dict) else ""
    raise TypeError(f"{name} must be a phd_jax.ModelConfig, got {type(config).__name__}{hint}")


def as_rng(name: str, value):
    """A PRNG key from a key (new-style or legacy uint32[2]) or an integer seed (numpy ok)."""
    if hasattr(value, "dtype") and jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
        return value
    if hasattr(value, "dtype") and value.dtype == np.uint32 and np.shape(value) == (2,):
        return value  # legacy jax.random.PRNGKey(seed)
    if is_traced(value) and jnp.issubdtype(value.dtype, jnp.integer) and value.shape == ():
        return jax.random.key(value)
    if is_int(value):
        return jax.random.key(int(_scalar(value)))
    fail(
        name,
        value,
        f"must be a PRNG key (jax.random.key(0)) or an integer seed (got {type(value).__name__})",
        TypeError,
    )


def as_token_id(name: str, value, vocab_size: int) -> int:
    """One token id (e.g. `eos_id`) as a Python int in [0, vocab_size)."""
    v = as_int(name, value)
    if not 0 <= v < vocab_size:
        fail(name, value, f"must be a token id in [0, vocab_size={vocab_size})")
    return v


def check_tokens(config, tokens, name: str = "tokens"):
    """Shape and dtype of a token array `[batch, length]`; the id range when concrete.

    Under tracing the ids are unknown: out-of-range ids are then clamped by the model
    (see `Transformer`), and a `checkify` check reports them in the checked mode
    (`phd_jax.checked`).
    """
    if tokens.ndim != 2 or 0 in tokens.shape:
        raise ValueError(f"{name} must have shape [batch, length] with both >= 1, got shape {tuple(tokens.shape)}")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"{name} must be integer token ids, got dtype {tokens.dtype}")
    v = config.vocab_size
    if is_traced(tokens):
        bad = jnp.where((tokens < 0) | (tokens >= v), tokens, 0)
        bad = jnp.where(jnp.min(bad) < 0, jnp.min(bad), jnp.max(bad))
        checkify.debug_check(
            jnp.all((tokens >= 0) & (tokens < v)),
            f"{name} contains id {{}}, outside the allowed range [0, vocab_size={v})",
            bad,
        )
        return
    values = np.asarray(tokens)  # concrete; np.min on a jax array inside a trace would stage
    lo, hi = int(values.min()), int(values.max())
    if lo < 0 or hi >= v:
        raise ValueError(f"{name} contains id {lo if lo < 0 else hi}, outside the allowed range [0, vocab_size={v})")


def check_tokens_per_sequence(config, tokens: int, what: str):
    """Refuse a static layout of more than `MAX_TOKENS_PER_SEQUENCE` tokens, before building it."""
    if tokens > MAX_TOKENS_PER_SEQUENCE:
        raise ValueError(
            f"{what} needs {tokens} tokens per sequence through the layers "
            f"(K={config.repeat}), above the limit MAX_TOKENS_PER_SEQUENCE="
            f"{MAX_TOKENS_PER_SEQUENCE} of the static mask patterns"
        )


def check_max_len(config, max_len, needed: int, what: str) -> int:
    """The cache length `max_len` (default `config.max_seq_len`) as an int that holds `needed` positions."""
    max_len = config.max_seq_len if max_len is None else as_int("max_len", max_len, 1)
    if max_len > config.max_seq_len:
        raise ValueError(f"max_len={max_len} exceeds ModelConfig.max_seq_len={config.max_seq_len}")
    if needed > max_len:
        raise ValueError(f"{what} needs {needed} positions but the cache holds max_len={max_len}")
    return max_len


# ---------------------------------------------------------------------------
# Parameters vs config
# ---------------------------------------------------------------------------

# Logical axis name of a parameter dimension -> the config field that sets its size.
AXIS_FIELDS = {
    "layers": "num_layers",
    "embed": "d_model",
    "heads": "num_heads",
    "kv_heads": "num_kv_heads",
    "head_dim": "head_dim",
    "mlp": "mlp_dim",
    "vocab": "vocab_size",
}


def _path(keys) -> str:
    """'layers/attention/query/kernel'; attribute steps (a boxed `nn.Partitioned(...).value`) are skipped."""
    return "/".join(
        str(getattr(k, "key", getattr(k, "idx", k))) for k in keys if not isinstance(k, jax.tree_util.GetAttrKey)
    )


@functools.lru_cache(maxsize=64)
def _expected_params(param_config):
    """{path: (shape, logical axis names)} of the parameters `param_config` makes."""
    from phd_jax.model import param_logical_axes, param_shapes  # noqa: PLC0415 (higher layer)

    shapes = {_path(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(param_shapes(param_config))[0]}
    axes = {
        _path(p): tuple(a)
        for p, a in jax.tree_util.tree_flatten_with_path(
            param_logical_axes(param_config), is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)
        )[0]
    }
    return {p: (shape, axes.get(p, (None,) * len(shape))) for p, shape in shapes.items()}


@functools.lru_cache(maxsize=256)
def _params_mismatch(param_config, treedef, shapes: tuple) -> str | None:
    """The error message for parameters of this tree structure and leaf shapes, or None if they fit.

    Cached: runs once per (param-shaping config, tree structure and shapes).
    `_params_mismatch.cache_info().misses` counts the real checks.
    """
    paths = jax.tree_util.tree_flatten_with_path(treedef.unflatten(range(len(shapes))))[0]
    got = tuple((_path(p), shapes[i]) for p, i in paths)
    expected = _expected_params(param_config)
    got = dict(got)
    if got and all(p.startswith("params/") for p in got):
        return (
            "params looks like a variables dict {'params': ...}: pass variables['params'] "
            "(the output of phd_jax.init_params)"
        )
    missing = [p for p in expected if p not in got]
    extra = [p for p in got if p not in expected]
    wrong = [p for p in expected if p in got and got[p] != expected[p][0]]
    if not (missing or extra or wrong):
        return None
    fields = {}
    for p in wrong:
        shape, names = expected[p]
        if len(got[p]) != len(shape):
            fields.setdefault(
                "scan_layers" if "layers" in names or p.startswith("layers/") else "shape",
                f"config {param_config.scan_layers}",
            )
            continue
        for dim, (want, have) in enumerate(zip(shape, got[p])):
            field = AXIS_FIELDS.get(names[dim]) if dim < len(names) else None
            if want != have and field:
                fields.setdefault(field, f"config {getattr(param_config, field)}, params {have}")
    for p in missing + extra:
        if p.startswith("unembed/"):
            fields.setdefault("tie_embeddings", f"config {param_config.tie_embeddings}")
        elif "query_norm" in p or "key_norm" in p:
            fields.setdefault("qk_norm", f"config {param_config.qk_norm}")
        elif p.startswith(("layers_", "layers/")):
            scanned = any(q.startswith("layers/") for q in got)
            if scanned != param_config.scan_layers:
                fields.setdefault("scan_layers", f"config {param_config.scan_layers}, params {scanned}")
            else:
                n = len({q.split("/")[0] for q in got if q.startswith("layers_")})
                fields.setdefault("num_layers", f"config {param_config.num_layers}, params {n}")
    leaves = (
        [f"{p} has shape {got[p]}, expected {expected[p][0]}" for p in wrong]
        + [f"{p} is missing" for p in missing]
        + [f"{p} is unexpected" for p in extra]
    )
    explain = (
        "; ".join(f"{f} ({why})" for f, why in fields.items())
        or "leaves missing or unexpected (another model, or edited by hand?)"
    )
    more = f" (+{len(leaves) - 2} more)" if len(leaves) > 2 else ""
    return f"params do not fit the config: {explain}. First mismatching leaves: {'; '.join(leaves[:2])}{more}"


def check_params(params, config):
    """Check a parameter tree against the structure and shapes `init_params(config)` makes.

    Cheap per call (the tree's structure and shapes are hashed; the comparison runs once
    per config and tree). Works on arrays, tracers and `jax.ShapeDtypeStruct`s, so a
    restored checkpoint can be checked before use. Raises a `ValueError` naming the
    first mismatching leaves and the config fields that explain them.
    """
    from phd_jax.config import param_config  # noqa: PLC0415

    check_config(config)
    if not isinstance(params, dict):
        raise TypeError(
            f"params must be a dict of arrays (the output of phd_jax.init_params), got {type(params).__name__}"
        )
    leaves, treedef = jax.tree.flatten(params)
    try:
        shapes = tuple(tuple(x.shape) for x in leaves)
    except AttributeError:
        raise TypeError(
            "params must be a tree of arrays (the output of phd_jax.init_params); some leaves have no shape"
        ) from None
    message = _params_mismatch(param_config(config), treedef, shapes)
    if message:
        raise ValueError(message)


# ---------------------------------------------------------------------------
# Decode state vs config
# ---------------------------------------------------------------------------

# Fields that change nothing a decode step computes from a state (backend and tiling of
# the static patterns, how layers are stacked, init, the config's length bound).
_STATE_IRRELEVANT = ("attention", "block_q", "block_kv", "scan_layers", "remat", "init_std", "max_seq_len")


def check_state(state, config, name: str = "state"):
    """A `DecodeState` made by `init_state`/`prefill` for this config (fields that matter)."""
    import dataclasses  # noqa: PLC0415

    from phd_jax.decode import DecodeState  # noqa: PLC0415 (higher layer)

    if not isinstance(state, DecodeState):
        raise TypeError(
            f"{name} must be a phd_jax.DecodeState (from prefill or init_state), got {type(state).__name__}"
        )
    made = state.config
    if made is not config and made != config:
        diff = [
            f"{f.name} (state {getattr(made, f.name)!r}, config {getattr(config, f.name)!r})"
            for f in dataclasses.fields(config)
            if f.name not in _STATE_IRRELEVANT and getattr(made, f.name) != getattr(config, f.name)
        ]
        if diff:
            raise ValueError(
                f"{name} was made for another model ({made.name}) than config ({config.name}): {', '.join(diff)}"
            )
    b = state.pos.shape[0]
    want = (config.num_layers, b, config.num_kv_heads, state.max_len * config.cached_copies, config.head_dim)
    if tuple(state.k.shape) != want or tuple(state.window_k.shape) != want[:3] + (config.effective_window,) + want[4:]:
        raise ValueError(
            f"{name} arrays do not have the shapes init_state makes for this config: "
            f"k {tuple(state.k.shape)} (expected {want}), window_k "
            f"{tuple(state.window_k.shape)}"
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
# Sampling arguments
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# Checked mode under jit
# ---------------------------------------------------------------------------


def checked(fn):
    """`fn` with the checks that compiled code cannot raise turned into errors (`checkify`).

    Inside `jax.jit` the library cannot raise on values (token ids, a full cache): it
    clamps ids into the vocabulary instead. `checked(fn)(*args)` runs `fn` (jitted or
    not) jitted under `jax.experimental.checkify` and raises a `ValueError` with the
    first failed check. Array arguments are traced; everything else (configs, ints,
    floats, strings) is passed through as a static value (each call traces again: a
    debugging mode, not a fast path):

        logits = phd_jax.checked(jax.jit(phd_jax.forward, static_argnums=1))(params, cfg, tokens)
    """

    def is_array(x):
        leaves = jax.tree.leaves(x)
        return bool(leaves) and all(isinstance(leaf, (jax.Array, np.ndarray)) for leaf in leaves)

    @functools.wraps(fn)
    def run(*args, **kwargs):
        dyn_pos = [i for i, a in enumerate(args) if is_array(a)]
        dyn_kw = [k for k, a in kwargs.items() if is_array(a)]

        def inner(pos_vals, kw_vals):
            full = list(args)
            for i, v in zip(dyn_pos, pos_vals):
                full[i] = v
            return fn(*full, **{**kwargs, **dict(zip(dyn_kw, kw_vals))})

        # Jitted, so the arguments are traced and every check becomes a checkify check.
        err, out = checkify.checkify(jax.jit(inner), errors=checkify.user_checks)(
            [args[i] for i in dyn_pos], [kwargs[k] for k in dyn_kw]
        )
        message = err.get()
        if message:
            raise ValueError(message.split(" (`check` failed)")[0].split("\n")[0])
        return out

    return run
