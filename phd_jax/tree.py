"""Names of pytree leaves: one spelling ('layers/attention/query/kernel') for messages and matching.

Imports nothing from phd_jax (and not JAX either): every layer may use it.
"""

from __future__ import annotations


def path_parts(path, attributes: bool = True) -> tuple[str, ...]:
    """The steps of a JAX key path (`tree_flatten_with_path`) as strings: dict keys, sequence
    indices and attribute names. `attributes=False` skips attribute steps (e.g. the `.value` of a
    boxed `nn.Partitioned`, the fields of an optax state)."""
    parts = []
    for k in path:
        if hasattr(k, "name") and not hasattr(k, "key"):  # GetAttrKey
            if attributes:
                parts.append(str(k.name))
        elif hasattr(k, "key"):  # DictKey, FlattenedIndexKey
            parts.append(str(k.key))
        elif hasattr(k, "idx"):  # SequenceKey
            parts.append(str(k.idx))
        else:
            parts.append(str(k))
    return tuple(parts)


def path_name(path, attributes: bool = True, sep: str = "/") -> str:
    """'layers/attention/query/kernel' for a key path (see `path_parts`)."""
    return sep.join(path_parts(path, attributes))
