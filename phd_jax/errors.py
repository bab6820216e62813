"""Errors and the object-independent argument checks: one message format for the library.

Every check raises `ValueError` (a bad value) or `TypeError` (a wrong type) whose
message starts with the argument's name, says what was given and what is allowed,
and never mentions Flax or JAX internals:

    ModelConfig.d_model='64' is invalid: must be an integer >= 1 (got str)

Numpy and JAX scalars are accepted wherever Python numbers are (`np.int64(3)` is an
integer, `jnp.float32(0.5)` a float); booleans are never integers or floats.

The bottom layer: this module imports nothing from phd_jax. The checks of one object
live beside it (`config.check_config`, `model.check_params`, `decode.check_state`,
`sampling.check_sampling`); here are the scalar helpers, PRNG keys (`as_rng`), token
ids (`as_token_id`) and the checked mode for compiled code (`checked`).
"""

from __future__ import annotations

import functools
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

# Longest repr of a value quoted in an error message (longer ones are cut with "...").
MAX_SHOWN_CHARS = 80


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
    return text if len(text) <= MAX_SHOWN_CHARS else text[: MAX_SHOWN_CHARS - 3] + "..."


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
# PRNG keys and token ids
# ---------------------------------------------------------------------------


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
