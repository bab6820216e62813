"""The device mesh (`data`, `fsdp`, `tensor`) and logical-axis rules -> NamedShardings.

`fsdp` shards parameters and optimizer state (their `embed` axis, by default) and, with
`data`, the batch; `tensor` shards heads, KV heads, MLP and vocabulary. Every sharded
dimension is checked against its mesh axes before anything compiles.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from phd_jax import axes
from phd_jax.config import ModelConfig
from phd_jax.errors import ConfigError
from phd_jax.model import param_logical_axes, param_shapes
from phd_jax.train.config import MESH_AXES, logical_rules, mesh_shape
from phd_jax.train.state import TrainState
from phd_jax.tree import path_name


def make_mesh(config, devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(config, len(devices))
    if len(devices) == jax.device_count() and devices == jax.devices():
        return jax.make_mesh(shape, MESH_AXES, devices=devices, axis_types=(jax.sharding.AxisType.Auto,) * 3)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def _mesh_axes(spec: P, rules) -> P:
    return nn.logical_to_mesh_axes(tuple(spec), rules)


def param_specs(cfg: ModelConfig, rules, mesh: Mesh):
    """PartitionSpecs (mesh axes) of every parameter; ConfigError if a dimension does not divide."""
    logical = param_logical_axes(cfg)
    shapes = param_shapes(cfg)
    rule_of = dict(rules)

    def one(path, spec, shape):
        mesh_spec = _mesh_axes(spec, rules)
        for dim, (name, targets) in enumerate(zip(spec, mesh_spec)):
            if targets is None:
                continue
            size = math.prod(mesh.shape[a] for a in ((targets,) if isinstance(targets, str) else targets))
            if shape.shape[dim] % size:
                raise ConfigError(
                    f"parameter {path_name(path)} (shape {tuple(shape.shape)}): dimension {dim} "
                    f"({name}={shape.shape[dim]}) is not divisible by mesh axes {targets} of size {size} "
                    f"(config.logical_axis_rules: ({name!r}, {rule_of.get(name)!r})); change the mesh "
                    f"or map {name!r} to None"
                )
        return mesh_spec

    return jax.tree_util.tree_map_with_path(one, logical, shapes, is_leaf=lambda x: isinstance(x, P))


def shardings_like(tree_specs, mesh: Mesh):
    return jax.tree.map(lambda s: NamedSharding(mesh, s), tree_specs, is_leaf=lambda x: isinstance(x, P))


def batch_spec(rules) -> P:
    return _mesh_axes(P(axes.ACTIVATION_BATCH, None), rules)


def opt_state_shardings(optimizer, params_shape, param_shardings, mesh: Mesh):
    """Optimizer state shards like the parameters it mirrors (Adam's mu and nu); the rest is replicated."""
    state_shape = jax.eval_shape(optimizer.init, params_shape)
    shapes = {path_name(p): x.shape for p, x in jax.tree_util.tree_leaves_with_path(params_shape)}
    shards = {path_name(p): s for p, s in jax.tree_util.tree_leaves_with_path(param_shardings)}
    replicated = NamedSharding(mesh, P())

    def one(path, leaf):
        name = path_name(path)
        for pname, sharding in shards.items():
            if (name == pname or name.endswith("/" + pname)) and leaf.shape == shapes[pname]:
                return sharding
        return replicated

    return jax.tree_util.tree_map_with_path(one, state_shape)


def train_shardings(cfg: ModelConfig, config, optimizer, mesh: Mesh):
    """(TrainState of shardings, batch sharding)."""
    rules = logical_rules(config)
    specs = param_specs(cfg, rules, mesh)
    params_sh = shardings_like(specs, mesh)
    params_shape = param_shapes(cfg)
    replicated = NamedSharding(mesh, P())
    state = TrainState(
        step=replicated,
        params=params_sh,
        opt_state=opt_state_shardings(optimizer, params_shape, params_sh, mesh),
        nonfinite=replicated,
    )
    return state, NamedSharding(mesh, batch_spec(rules))


def check_divisible_heads(cfg: ModelConfig, config, mesh: Mesh):
    """Activation axes the rules shard must divide too (heads over `tensor` in attention)."""
    rules = logical_rules(config)
    for name, size in (
        (axes.ACTIVATION_HEADS, cfg.num_heads),
        (axes.ACTIVATION_KV_HEADS, cfg.num_kv_heads),
        (axes.ACTIVATION_MLP, cfg.mlp_dim),
        (axes.ACTIVATION_VOCAB, cfg.vocab_size),
    ):
        targets = _mesh_axes(P(name), rules)[0]
        if targets is None:
            continue
        n = math.prod(mesh.shape[a] for a in ((targets,) if isinstance(targets, str) else targets))
        if size % n:
            raise ConfigError(
                f"{name.replace('activation_', '')}={size} is not divisible by mesh axes "
                f"{targets} of size {n} (config.logical_axis_rules: ({name!r}, {targets!r}))"
            )
