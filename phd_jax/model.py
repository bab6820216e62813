"""The PHD transformer, a decoder with Llama, OLMo2, Qwen2 or Qwen3 blocks (Flax Linen), top to bottom.

The block options are `ModelConfig` fields (`norm_position`, `qk_norm`, `qkv_bias`,
`rope_scaling`; docs/architecture.md). Parameter names, per layer (under `layers/` stacked,
or `layers_<i>/`): `attention/{query,key,value,out}/kernel`, with `qkv_bias`
`attention/{query,key,value}/bias` `[heads, head_dim]`; `qk_norm` "head":
`attention/{query,key}_norm/scale` `[head_dim]`, "projection": the same names with shape
`[num_heads, head_dim]` / `[num_kv_heads, head_dim]` (one RMSNorm over all heads together);
`norm_position` "pre": `attention_norm/scale`, `mlp_norm/scale` (on the sublayer inputs),
"post": `post_attention_norm/scale`, `post_mlp_norm/scale` (on the sublayer outputs);
`mlp/{gate,up,down}/kernel`; then `final_norm/scale`, `embed/embedding`, `unembed/kernel`.

PHD adds no parameters: it changes only which tokens run through the layers
(each input token repeated K times, all copies with the same embedding) and
the attention mask (`phd_jax.masks`). Only the last copy of each position
reaches the unembedding.

The same modules run in two modes, named by `Transformer.mode` (`MODES`):
- `full` (training / `forward`, prefill of the cached stream): a static token
  `layout` whose mask is a static block-sparse pattern;
- `extend` (prefill tail, decode steps): a few new tokens attend to a KV cache
  with a run-time mask (`mask` and `cache` given).
Both return the new tokens' keys/values per layer when asked, so the caller
(`phd_jax.decode`) owns every cache write.
"""

from __future__ import annotations

import functools
import math
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from phd_jax import axes
from phd_jax import params as params_lib
from phd_jax.attention import attend, layout_kind, static_config
from phd_jax.config import MODES, ModelConfig, check_config, check_tokens, check_tokens_per_sequence, param_config
from phd_jax.errors import as_rng
from phd_jax.kv_cache import KVCache, cached_attention
from phd_jax.masks import Layout


class _Partitioned(nn.LogicallyPartitioned):
    """Logical axis names on a parameter. DenseGeneral unboxes its flattened kernel at init
    (also inside `apply`, to check shapes): no sharding constraint on that flat array."""

    def unbox(self, apply_constraint=True):
        return super().unbox(apply_constraint and self.value.ndim == len(self.names))


def _init(cfg: ModelConfig, names: tuple[str, ...], init=None):
    """Normal init (or `init`) carrying logical axis names, so training can shard parameters."""
    init = nn.initializers.normal(cfg.init_std) if init is None else init
    return lambda *args, **kwargs: _Partitioned(init(*args, **kwargs), names)


def token_matmul(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """A projection's `dot_general` as one 2-D matmul `[tokens, in] @ [in, out]`: the token dims
    (batch, length) flattened into one. Left as two contracted dims, the weight gradient makes
    XLA:CPU transpose the whole activation gradient first (a third of a train step, and more
    per token at K*T tokens); flattened, every dot of the backward pass is a plain GEMM.
    Any other contraction goes to `lax.dot_general` unchanged."""
    (lc, rc), (lb, rb) = dimension_numbers
    lc, nc = tuple(d % lhs.ndim for d in lc), len(lc)
    if lb or rb or lc != tuple(range(lhs.ndim - nc, lhs.ndim)) or tuple(rc) != tuple(range(nc)):
        return jax.lax.dot_general(
            lhs, rhs, dimension_numbers, precision=precision, preferred_element_type=preferred_element_type
        )
    tokens, k = lhs.shape[: lhs.ndim - nc], math.prod(lhs.shape[lhs.ndim - nc :])
    out = jax.lax.dot_general(
        lhs.reshape(-1, k),
        rhs.reshape(k, -1),
        (((1,), (0,)), ((), ())),
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    return out.reshape(tokens + rhs.shape[nc:])


def _dense(cfg: ModelConfig, features, names: tuple[str, ...], name: str, axis=-1, bias: bool = False):
    """Projection whose kernel carries the logical axis `names`; with `bias`, a bias (zeros at
    init) over the output features, named by the output's axes."""
    n_out = len(features) if isinstance(features, tuple) else 1
    return nn.DenseGeneral(
        features,
        axis=axis,
        use_bias=bias,
        dtype=cfg.compute_dtype,
        param_dtype=cfg.weight_dtype,
        name=name,
        kernel_init=_init(cfg, names),
        bias_init=_init(cfg, names[-n_out:], nn.initializers.zeros_init()),
        dot_general=token_matmul,
    )


def _constrain(x, *names):
    """Shard an activation by logical axis names (a no-op unless the trainer set rules and a mesh)."""
    return nn.with_logical_constraint(x, names)


def _norm(cfg: ModelConfig, axis_names, name: str):
    """RMSNorm over the last `len(axis_names)` dims (one logical axis name each), one scale per feature."""
    axis_names = (axis_names,) if isinstance(axis_names, str) else tuple(axis_names)
    dims = tuple(range(-len(axis_names), 0))
    return nn.RMSNorm(
        epsilon=cfg.norm_eps,
        dtype=cfg.compute_dtype,
        param_dtype=cfg.weight_dtype,
        name=name,
        reduction_axes=dims if len(dims) > 1 else -1,
        feature_axes=dims if len(dims) > 1 else -1,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, axis_names),
    )


def rope_positions(cfg: ModelConfig, pos, copy):
    """Rotary position id of copy `copy` of position `pos` (docs/spec.md section 2)."""
    return pos * cfg.repeat + copy if cfg.position_mode == "flat" else pos + 0 * copy


def rope_inv_freq(cfg: ModelConfig):
    """The rotary inverse frequencies `[head_dim / 2]` (float32): `rope_theta ** (-2i / head_dim)`,
    with `rope_scaling="llama3"` rescaled as Llama 3.1 does (transformers'
    `modeling_rope_utils._compute_llama3_parameters`): wavelengths above
    `rope_original_max_len / rope_low_freq_factor` divided by `rope_factor`, those below
    `rope_original_max_len / rope_high_freq_factor` kept, and a smooth blend in between."""
    d = cfg.head_dim
    inv_freq = cfg.rope_theta ** (-jnp.arange(0, d, 2, dtype=jnp.float32) / d)
    if cfg.rope_scaling == "none":
        return inv_freq
    factor, low, high = cfg.rope_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
    old_len = cfg.rope_original_max_len
    wavelen = 2 * math.pi / inv_freq
    scaled = jnp.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return jnp.where(medium, smoothed, scaled)


def apply_rope(x, positions, theta: float | None = None, inv_freq=None):
    """Rotate-half RoPE. x `[B, N, H, D]`; positions `[N]` or `[B, N]`; the frequencies
    `inv_freq` `[D/2]` (`rope_inv_freq`), or `theta ** (-2i / D)` from `theta`."""
    d = x.shape[-1]
    if inv_freq is None:
        inv_freq = theta ** (-jnp.arange(0, d, 2, dtype=jnp.float32) / d)
    angles = jnp.asarray(positions, jnp.float32)[..., None] * inv_freq  # [(B,) N, D/2]
    angles = jnp.broadcast_to(angles, x.shape[:2] + angles.shape[-1:])[:, :, None, :]
    sin, cos = jnp.sin(angles), jnp.cos(angles)
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class Attention(nn.Module):
    cfg: ModelConfig
    layout: Layout | None = None
    mode: str = "full"

    @nn.compact
    def __call__(self, x, positions, mask=None, cache: KVCache | None = None, segments=None):
        cfg = self.cfg
        q_axes, kv_axes = (axes.EMBED, axes.HEADS, axes.HEAD_DIM), (axes.EMBED, axes.KV_HEADS, axes.HEAD_DIM)
        q = _dense(cfg, (cfg.num_heads, cfg.head_dim), q_axes, "query", bias=cfg.qkv_bias)(x)
        k = _dense(cfg, (cfg.num_kv_heads, cfg.head_dim), kv_axes, "key", bias=cfg.qkv_bias)(x)
        v = _dense(cfg, (cfg.num_kv_heads, cfg.head_dim), kv_axes, "value", bias=cfg.qkv_bias)(x)
        if cfg.qk_norm == "head":  # RMSNorm of each head's queries and keys (Qwen3)
            q = _norm(cfg, axes.HEAD_DIM, "query_norm")(q)
            k = _norm(cfg, axes.HEAD_DIM, "key_norm")(k)
        elif cfg.qk_norm == "projection":  # one RMSNorm over all heads' features together (OLMo2)
            q = _norm(cfg, q_axes[1:], "query_norm")(q)
            k = _norm(cfg, kv_axes[1:], "key_norm")(k)
        if cfg.rope_scaling == "none":  # the frequencies of phd_jax <= 0.2, computed as they were
            q = apply_rope(q, positions, cfg.rope_theta)
            k = apply_rope(k, positions, cfg.rope_theta)
        else:
            q = apply_rope(q, positions, inv_freq=rope_inv_freq(cfg))
            k = apply_rope(k, positions, inv_freq=rope_inv_freq(cfg))
        q = _constrain(q, axes.ACTIVATION_BATCH, axes.ACTIVATION_LENGTH, axes.ACTIVATION_HEADS, None)
        k, v = (
            _constrain(x, axes.ACTIVATION_BATCH, axes.ACTIVATION_LENGTH, axes.ACTIVATION_KV_HEADS, None) for x in (k, v)
        )
        if self.mode == "full":
            o = attend(q, k, v, self.layout, cfg, segments)
        else:
            o = cached_attention(q, k, v, cache, mask)
        o = _constrain(o, axes.ACTIVATION_BATCH, axes.ACTIVATION_LENGTH, axes.ACTIVATION_HEADS, None)
        out = _dense(cfg, cfg.d_model, (axes.HEADS, axes.HEAD_DIM, axes.EMBED), "out", axis=(-2, -1))(o)
        return out, (k, v)


class Mlp(nn.Module):
    """SwiGLU feed-forward."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        gate = _dense(cfg, cfg.mlp_dim, (axes.EMBED, axes.MLP), "gate")(x)
        up = _dense(cfg, cfg.mlp_dim, (axes.EMBED, axes.MLP), "up")(x)
        hidden = _constrain(nn.silu(gate) * up, axes.ACTIVATION_BATCH, axes.ACTIVATION_LENGTH, axes.ACTIVATION_MLP)
        return _dense(cfg, cfg.d_model, (axes.MLP, axes.EMBED), "down")(hidden)


class DecoderLayer(nn.Module):
    """Pre-norm block (`norm_position="pre"`, Llama / Qwen): x + attn(norm(x)), then
    h + mlp(norm(h)); post-norm block ("post", OLMo2): x + norm(attn(x)), then h + norm(mlp(h))."""

    cfg: ModelConfig
    layout: Layout | None = None
    collect_kv: bool = False
    mode: str = "full"

    @nn.compact
    def __call__(self, x, positions, mask=None, cache=None, segments=None):
        cfg = self.cfg
        attention = Attention(cfg, self.layout, self.mode, name="attention")
        if cfg.norm_position == "pre":
            h, kv = attention(_norm(cfg, axes.EMBED, "attention_norm")(x), positions, mask, cache, segments)
            x = x + h
            x = x + Mlp(cfg, name="mlp")(_norm(cfg, axes.EMBED, "mlp_norm")(x))
        else:
            h, kv = attention(x, positions, mask, cache, segments)
            x = x + _norm(cfg, axes.EMBED, "post_attention_norm")(h)
            x = x + _norm(cfg, axes.EMBED, "post_mlp_norm")(Mlp(cfg, name="mlp")(x))
        x = _constrain(x, axes.ACTIVATION_BATCH, axes.ACTIVATION_LENGTH, axes.ACTIVATION_EMBED)
        return x, (kv if self.collect_kv or self.mode == "extend" else None)


_REMAT_POLICIES = {
    "full": None,  # save nothing, recompute the whole layer
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class Transformer(nn.Module):
    """Embedding, L decoder layers (optionally `nn.scan`-ned and rematerialised), unembedding.

    mode `full` needs `layout` (the static token set); mode `extend` needs `mask` and `cache`
    at call time and always returns the new tokens' keys/values (the caller writes them)."""

    cfg: ModelConfig
    layout: Layout | None = None
    collect_kv: bool = False
    mode: str = "full"

    @nn.compact
    def __call__(self, tokens, positions, out_rows, mask=None, cache=None, segments=None):
        """tokens `[B, N]` (already repeated), positions `[N]` or `[B, N]`,
        out_rows `[R]` or `[B, R]`: the rows that get logits; segments: packed documents
        `(segment_ids, offsets)` `[B, N]` per token (`attention.attend`), or None.

        Returns logits `[B, R, vocab]` (float32) and, when collected, the
        per-layer keys/values `[L, B, N, KVH, D]` of all N tokens.
        """
        cfg = self.cfg
        if self.mode not in MODES:
            raise ValueError(f"Transformer mode={self.mode!r} is invalid: allowed: {', '.join(MODES)}")
        if self.mode == "full" and (self.layout is None or cache is not None):
            raise ValueError("Transformer mode='full' runs a static token layout: pass layout=, not cache=")
        if self.mode == "extend" and (cache is None or mask is None):
            raise ValueError("Transformer mode='extend' runs new tokens against a cache: pass cache= and mask=")
        embed = nn.Embed(
            cfg.vocab_size,
            cfg.d_model,
            dtype=cfg.compute_dtype,
            param_dtype=cfg.weight_dtype,
            name="embed",
            embedding_init=_init(cfg, (axes.VOCAB, axes.EMBED)),
        )
        # Ids outside the vocabulary cannot raise inside compiled code: clamp them (documented;
        # eager entry points refuse them first, `phd_jax.checked` reports them under jit).
        x = _constrain(
            embed(jnp.clip(tokens, 0, cfg.vocab_size - 1)),
            axes.ACTIVATION_BATCH,
            axes.ACTIVATION_LENGTH,
            axes.ACTIVATION_EMBED,
        )

        layer = DecoderLayer
        if cfg.remat != "none":
            layer = nn.remat(layer, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)
        if cfg.scan_layers:
            stack = nn.scan(
                layer,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=(nn.broadcast, nn.broadcast, 0, nn.broadcast),
                length=cfg.num_layers,
                metadata_params={nn.PARTITION_NAME: axes.LAYERS},
            )
            x, kv = stack(cfg, self.layout, self.collect_kv, self.mode, name="layers")(
                x, positions, mask, cache, segments
            )
        else:
            kvs = []
            for i in range(cfg.num_layers):
                layer_cache = None if cache is None else jax.tree.map(lambda c: c[i], cache)
                x, kv_i = layer(cfg, self.layout, self.collect_kv, self.mode, name=f"layers_{i}")(
                    x, positions, mask, layer_cache, segments
                )
                kvs.append(kv_i)
            kv = None if kvs[0] is None else jax.tree.map(lambda *a: jnp.stack(a), *kvs)

        out_rows = jnp.asarray(out_rows)
        if out_rows.ndim == 1:
            x = jnp.take(x, out_rows, axis=1)
        else:
            x = jnp.take_along_axis(x, out_rows[..., None], axis=1)
        x = _norm(cfg, axes.EMBED, "final_norm")(x)
        if cfg.tie_embeddings:
            logits = embed.attend(x)
        else:
            logits = _dense(cfg, cfg.vocab_size, (axes.EMBED, axes.VOCAB), "unembed")(x)
        logits = _constrain(logits, axes.ACTIVATION_BATCH, axes.ACTIVATION_LENGTH, axes.ACTIVATION_VOCAB)
        return logits.astype(jnp.float32), kv


def _init_boxed(cfg: ModelConfig, rng):
    layout = Layout.for_config(cfg, 1, "originals")
    return Transformer(cfg, layout).init(
        rng, jnp.zeros((1, 1), jnp.int32), jnp.zeros((1,), jnp.int32), np.zeros((1,), np.int32)
    )["params"]


@functools.partial(jax.jit, static_argnums=0)
def _init_jit(cfg, rng):
    return nn.unbox(_init_boxed(cfg, rng))


def init_params(cfg: ModelConfig, rng) -> dict:
    """Random parameters (a plain pytree of arrays). `rng`: a PRNG key or an (numpy) int seed.

    The same for every variant, K, W and C: PHD changes no parameter.
    """
    check_config(cfg)
    return _init_jit(param_config(cfg), as_rng("rng", rng))


def param_shapes(cfg: ModelConfig):
    """The parameter tree `init_params(cfg)` makes, as `jax.ShapeDtypeStruct`s (nothing allocated).

    Traced once per parameter-shaping config (the trainer, sharding and checkpoints all ask)."""
    return _param_shapes(param_config(cfg))


@functools.lru_cache(maxsize=32)
def _param_shapes(cfg: ModelConfig):
    return jax.eval_shape(lambda: _init_jit(cfg, jax.random.key(0)))


def param_logical_axes(cfg: ModelConfig):
    """PartitionSpecs of logical axis names (`embed`, `mlp`, `heads`, `kv_heads`,
    `head_dim`, `vocab`, `layers`), one per parameter, to map onto a mesh."""
    boxed = jax.eval_shape(lambda: _init_boxed(param_config(cfg), jax.random.key(0)))
    return nn.get_partition_spec(boxed)


def num_params(params) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def check_params(params, cfg: ModelConfig):
    """Check a parameter tree against the structure and shapes `init_params(cfg)` makes
    (`phd_jax.params.check`: cheap per call, cached per config and tree; arrays, tracers or
    `jax.ShapeDtypeStruct`s). Raises a `ValueError` naming the first mismatching leaves and the
    config fields that explain them."""
    check_config(cfg)
    params_lib.check(params, param_config(cfg), param_shapes, param_logical_axes)


def run_layout(params, cfg: ModelConfig, layout: Layout, tokens, out_rows, collect_kv: bool = False, segments=None):
    """Run the static token set `layout` built from `tokens [B, T]`: (logits at `out_rows`,
    per-layer keys/values `[L, B, N, KVH, D]` if `collect_kv`).

    segments: None, or `(segment_ids, offsets)` `[B, T]` per position (`segment_positions`):
    rotary positions count from each segment's start and attention stays inside segments."""
    pos, copy = layout.tokens
    if segments is None:
        positions, token_segments = rope_positions(cfg, pos, copy), None
    else:
        segment_ids, offsets = segments
        positions = rope_positions(cfg, offsets[:, pos], copy)
        token_segments = (segment_ids[:, pos], offsets[:, pos])
    return Transformer(cfg, layout, collect_kv).apply(
        {"params": params}, tokens[:, pos], positions, out_rows, segments=token_segments
    )


def segment_positions(segment_ids):
    """`(segment_ids, offsets)` `[B, T]` of packed documents: each maximal run of equal segment
    ids is one segment (renumbered from 0 per row); offset = position from that segment's first
    token. (Called `document_positions` before 0.2.)"""
    seg = jnp.asarray(segment_ids)
    start = jnp.concatenate([jnp.ones(seg.shape[:1] + (1,), bool), seg[:, 1:] != seg[:, :-1]], axis=1)
    idx = jnp.arange(seg.shape[1], dtype=jnp.int32)
    first = jax.lax.cummax(jnp.where(start, idx, 0), axis=1)
    return jnp.cumsum(start, axis=1, dtype=jnp.int32) - 1, idx - first


def forward(params, cfg: ModelConfig, tokens, segment_ids=None):
    """Logits `[B, T, vocab]`: the last copy of position n predicts token n+1.

    segment_ids `[B, T]` (optional, packed documents, docs/spec.md section 3): attention only within a
    document (a run of equal ids), rotary positions and chunks counted from its start, so each
    document's logits equal those of the document run alone. Prefill/decode take no segment ids.
    Pure; jit it with `jax.jit(forward, static_argnums=1)`. Checks `cfg`, `params`
    (once per config and tree structure) and `tokens`; under jit, ids outside the
    vocabulary are clamped to [0, vocab_size - 1] (see `phd_jax.checked`).
    """
    check_config(cfg)
    check_params(params, cfg)
    tokens = jnp.asarray(tokens)
    check_tokens(cfg, tokens)
    t = tokens.shape[1]
    if t > cfg.max_seq_len:
        raise ValueError(f"sequence length {t} exceeds ModelConfig.max_seq_len={cfg.max_seq_len}")
    check_tokens_per_sequence(cfg, t * cfg.repeat, f"forward over {t} positions")
    segments = None
    if segment_ids is not None:
        segment_ids = jnp.asarray(segment_ids)
        if segment_ids.shape != tokens.shape or not jnp.issubdtype(segment_ids.dtype, jnp.integer):
            raise ValueError(
                f"segment_ids must be integers of the tokens' shape {tuple(tokens.shape)}, "
                f"got {segment_ids.dtype} {tuple(segment_ids.shape)}"
            )
        segments = segment_positions(segment_ids)
    layout = Layout.for_config(static_config(cfg, segments is not None), t, layout_kind(cfg))
    return run_layout(params, cfg, layout, tokens, layout.logit_rows, segments=segments)[0]


_DEPRECATED = {"document_positions": "segment_positions"}


def __getattr__(name: str):
    """Deprecated names of 0.1."""
    if name in _DEPRECATED:
        new = _DEPRECATED[name]
        warnings.warn(f"phd_jax.model.{name} is deprecated: use phd_jax.model.{new}", DeprecationWarning, stacklevel=2)
        return globals()[new]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
