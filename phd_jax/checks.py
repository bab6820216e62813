"""Argument checks shared by every entry point: one place, one message format.

Every check raises `ValueError` (a bad value) or `TypeError` (a wrong type) whose
message starts with the argument's name, says what was given and what is allowed,
and never mentions Flax or JAX internals:

    ModelConfig.d_model='64' is invalid: must be an integer >= 1 (got str)

Numpy and JAX scalars are accepted wherever Python numbers are (`np.int64(3)` is an
integer, `jnp.float32(0.5)` a float); booleans are never integers or floats.
"""
from __future__ import annotations

import math
import numbers

import numpy as np


class ConfigError(ValueError):
    """A configuration value or combination is invalid (the message names the key)."""


def fail(name: str, value, allowed: str, error=ValueError):
    """Raise `error("<name>=<value> is invalid: <allowed>")`."""
    raise error(f"{name}={_show(value)} is invalid: {allowed}")


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _scalar(value):
    """A numpy / JAX 0-d value as the Python scalar it holds; anything else unchanged."""
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "shape") and hasattr(value, "dtype") and getattr(value, "shape", None) == ():
        try:
            return np.asarray(value).item()    # a concrete jax scalar
        except Exception:                       # a tracer: leave it to the caller
            return value
    return value


def is_int(value) -> bool:
    value = _scalar(value)
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def as_int(name: str, value, low: int | None = None, high: int | None = None, error=ValueError) -> int:
    """`value` as a Python int in [low, high] (numpy integers accepted, bools refused)."""
    v = _scalar(value)
    if not is_int(v):
        fail(name, value, f"must be an integer{_range(low, high)} (got {type(value).__name__})",
             TypeError if error is ValueError else error)
    v = int(v)
    if (low is not None and v < low) or (high is not None and v > high):
        fail(name, value, f"must be an integer{_range(low, high)}", error)
    return v


def as_float(name: str, value, low: float | None = None, high: float | None = None, *,
             low_open: bool = False, high_open: bool = False, error=ValueError) -> float:
    """`value` as a finite Python float in the given range (ints and numpy floats accepted)."""
    v = _scalar(value)
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        fail(name, value, f"must be a number (got {type(value).__name__})",
             TypeError if error is ValueError else error)
    v = float(v)
    lo = "(" if low_open else "["
    hi = ")" if high_open else "]"
    span = f" in {lo}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi}"
    if not math.isfinite(v):
        fail(name, value, f"must be a finite number{span if low is not None or high is not None else ''}",
             error)
    if low is not None and (v < low or (low_open and v == low)):
        fail(name, value, f"must be{span}", error)
    if high is not None and (v > high or (high_open and v == high)):
        fail(name, value, f"must be{span}", error)
    return v


def as_bool(name: str, value) -> bool:
    """`value` as a bool: True/False (or numpy bools) only; strings and ints are refused."""
    v = _scalar(value)
    if not isinstance(v, (bool, np.bool_)):
        fail(name, value, f"must be True or False (got {type(value).__name__})", TypeError)
    return bool(v)


def one_of(name: str, value, allowed) -> str:
    """`value` if it is one of `allowed`, else a ValueError listing them."""
    if not isinstance(value, str) or value not in allowed:
        fail(name, value, f"allowed: {', '.join(map(str, allowed))}")
    return value


def _range(low, high) -> str:
    if low is not None and high is not None:
        return f" in [{low}, {high}]"
    if low is not None:
        return f" >= {low}"
    if high is not None:
        return f" <= {high}"
    return ""
