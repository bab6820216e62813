"""A parameter tree against the config it claims to fit: one comparison, cached, with an error
that names the first mismatching leaves and the config fields that explain them.

The model passes its own `param_shapes` and `param_logical_axes` in (this module sits below it and
imports no model code); `phd_jax.check_params` is the public entry.
"""

from __future__ import annotations

import functools

import jax

from phd_jax.tree import path_name

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


# Module names (the part before the parameter's own name) that belong to a block option.
_QK_NORMS = ("query_norm", "key_norm")
_BLOCK_NORMS = ("attention_norm", "mlp_norm", "post_attention_norm", "post_mlp_norm")


def _part(path: str) -> str:
    """The module a parameter belongs to: `layers/attention/query_norm/scale` -> `query_norm`."""
    parts = path.split("/")
    return parts[-2] if len(parts) > 1 else ""


def _block_option(field: str, param_cfg, got: dict) -> str:
    """`config X, params Y` for a block option, Y read off the parameter names and shapes."""
    if field == "norm_position":
        value = "post" if any(_part(p) == "post_attention_norm" for p in got) else "pre"
    elif field == "qkv_bias":
        value = any(p.endswith("/bias") and _part(p) == "query" for p in got)
    else:
        scales = [(p, shape) for p, shape in got.items() if _part(p) == "query_norm"]
        value = "none"
        if scales:
            p, shape = scales[0]
            value = "head" if len(shape) - p.startswith("layers/") == 1 else "projection"
    return f"config {getattr(param_cfg, field)!r}, params {value!r}"


@functools.lru_cache(maxsize=64)
def _expected_params(param_cfg, shapes_of, axes_of):
    """{path: (shape, logical axis names)} of the parameters `param_cfg` makes."""
    shapes = {
        path_name(p, attributes=False): tuple(x.shape)
        for p, x in jax.tree_util.tree_flatten_with_path(shapes_of(param_cfg))[0]
    }
    names = {
        path_name(p, attributes=False): tuple(a)
        for p, a in jax.tree_util.tree_flatten_with_path(
            axes_of(param_cfg), is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)
        )[0]
    }
    return {p: (shape, names.get(p, (None,) * len(shape))) for p, shape in shapes.items()}


@functools.lru_cache(maxsize=256)
def _params_mismatch(param_cfg, treedef, shapes: tuple, shapes_of, axes_of) -> str | None:
    """The error message for parameters of this tree structure and leaf shapes, or None if they fit.

    Cached: runs once per (param-shaping config, tree structure and shapes).
    `_params_mismatch.cache_info().misses` counts the real checks.
    """
    paths = jax.tree_util.tree_flatten_with_path(treedef.unflatten(range(len(shapes))))[0]
    got = tuple((path_name(p, attributes=False), shapes[i]) for p, i in paths)
    expected = _expected_params(param_cfg, shapes_of, axes_of)
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
        if _part(p) in _QK_NORMS:
            fields.setdefault("qk_norm", _block_option("qk_norm", param_cfg, got))
            continue
        if len(got[p]) != len(shape):
            fields.setdefault(
                "scan_layers" if "layers" in names or p.startswith("layers/") else "shape",
                f"config {param_cfg.scan_layers}",
            )
            continue
        for dim, (want, have) in enumerate(zip(shape, got[p])):
            field = AXIS_FIELDS.get(names[dim]) if dim < len(names) else None
            if want != have and field:
                fields.setdefault(field, f"config {getattr(param_cfg, field)}, params {have}")
    for p in missing + extra:
        if p.startswith("unembed/"):
            fields.setdefault("tie_embeddings", f"config {param_cfg.tie_embeddings}")
        elif _part(p) in _QK_NORMS:
            fields.setdefault("qk_norm", _block_option("qk_norm", param_cfg, got))
        elif _part(p) in _BLOCK_NORMS:
            fields.setdefault("norm_position", _block_option("norm_position", param_cfg, got))
        elif p.endswith("/bias") and _part(p) in ("query", "key", "value"):
            fields.setdefault("qkv_bias", _block_option("qkv_bias", param_cfg, got))
        elif p.startswith(("layers_", "layers/")):
            scanned = any(q.startswith("layers/") for q in got)
            if scanned != param_cfg.scan_layers:
                fields.setdefault("scan_layers", f"config {param_cfg.scan_layers}, params {scanned}")
            else:
                n = len({q.split("/")[0] for q in got if q.startswith("layers_")})
                fields.setdefault("num_layers", f"config {param_cfg.num_layers}, params {n}")
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


def check(params, param_cfg, shapes_of, axes_of):
    """Check `params` against the tree `shapes_of(param_cfg)` makes (`phd_jax.model.check_params`
    passes `param_shapes` and `param_logical_axes`; `param_cfg` is `config.param_config(cfg)`,
    so configs that make the same parameters share one check).

    Cheap per call: the tree's structure and leaf shapes are hashed and the comparison runs once
    per (parameter-shaping config, tree). Works on arrays, tracers and `jax.ShapeDtypeStruct`s.
    """
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
    message = _params_mismatch(param_cfg, treedef, shapes, shapes_of, axes_of)
    if message:
        raise ValueError(message)
