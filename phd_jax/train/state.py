"""The trainer's state: `TrainState(step, params, opt_state, nonfinite)`, a pytree.

In a checkpoint it is the dict of its fields (`WORKDIR/checkpoints/<step>/state`); a checkpoint
may hold more entries than these (0.1.0 also saved an `rng` that nothing used), which restore
leaves on disk.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import struct


@struct.dataclass
class TrainState:
    """`step` (int32, optimizer steps taken), `params`, `opt_state` (the optimizer's), and
    `nonfinite` (int32: updates skipped for a non-finite loss or gradient, see
    `config.skip_nonfinite`)."""

    step: jax.Array
    params: Any
    opt_state: Any
    nonfinite: jax.Array

    def to_tree(self) -> dict:
        """The checkpoint's tree: a dict of the fields."""
        return {name: getattr(self, name) for name in FIELDS}

    @classmethod
    def from_tree(cls, tree) -> TrainState:
        """From a checkpoint's tree (extra entries, like 0.1.0's `rng`, are ignored)."""
        return cls(**{name: tree[name] for name in FIELDS})


FIELDS = ("step", "params", "opt_state", "nonfinite")
