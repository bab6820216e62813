"""`splash`: the TPU Pallas splash-attention kernel, fed with a pattern's mask computed from
`allowed` (never stored). Default on TPU; elsewhere it runs in Pallas interpret mode (tests).

Imported only when used (`phd_jax.attention.attend` imports it in its splash branch), so a
CPU or GPU run never loads splash's modules.

Private API: `SplashPatternMask` subclasses splash's private `_ComputableMask`
(`jax.experimental.pallas.ops.tpu.splash_attention.splash_attention_mask`), checked against
jax 0.10.2. It relies on: `_ComputableMask.__init__(shape, mask_function)`; splash's
`process_mask` reading tiles through `__getitem__` with whole-tile slices, calling `.any()`
and `.all()` on them, and, because the mask defines `q_sequence` and `mask_function`,
evaluating `mask_function(q_ids, kv_ids)` inside the kernel on partial tiles instead of
loading mask data; and masks being hashable (splash caches its preprocessing by mask). A JAX
upgrade that changes any of these breaks `tests/test_patterns.py`'s splash tests first.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask_lib

from phd_jax import axes
from phd_jax.config import SPLASH_BLOCK_MULTIPLE
from phd_jax.masks import EMPTY, FULL, BlockPattern


def splash_sizes(pattern: BlockPattern) -> tuple[int, int, int]:
    """`(block_q, block_kv, padded length)`: splash runs whole blocks of both sizes."""
    bq, bk = pattern.block_q, pattern.block_kv
    if bq % SPLASH_BLOCK_MULTIPLE or bk % SPLASH_BLOCK_MULTIPLE:
        raise ValueError(
            f"splash attention needs block_q and block_kv that are multiples of {SPLASH_BLOCK_MULTIPLE}, "
            f"got block_q={bq}, block_kv={bk}"
        )
    n = pattern.shape[0]
    step = int(np.lcm(bq, bk))
    return bq, bk, -(-n // step) * step


class _UniformTile(np.ndarray):
    """A whole empty or full tile: `any()` / `all()` answer without scanning it
    (splash asks both for each of the (N / block)^2 tiles, several times). Arrays
    derived from one (views, ufunc results) are scanned as usual."""

    value = None

    def __array_finalize__(self, obj):
        self.value = None

    def any(self, *args, **kwargs):
        return self.value if self.value is not None and not (args or kwargs) else super().any(*args, **kwargs)

    def all(self, *args, **kwargs):
        return self.value if self.value is not None and not (args or kwargs) else super().all(*args, **kwargs)


class SplashPatternMask(splash_mask_lib._ComputableMask):  # private JAX API: see the module docstring
    """A pattern's mask for splash, padded to `n_pad` (padded rows see only themselves),
    computed from `allowed` instead of stored: splash evaluates `mask_function` inside
    its kernel on partial tiles; on the host it reads tiles through `__getitem__`, which
    takes whole tiles' classes from the pattern (no `[N, N]` array anywhere).

    Subclasses splash's private `_ComputableMask` (checked against jax 0.10.2; what it relies
    on is listed in this module's docstring)."""

    def __init__(self, pattern: BlockPattern, n_pad: int):
        self.pattern, n, layout = pattern, pattern.shape[0], pattern.layout

        def mask_function(q, k):  # numpy on the host, jax in the kernel: operators only
            inside = (q < n) & (k < n)
            return (inside & layout.allowed_at(q, k)) | (~inside & (q == k))

        super().__init__((n_pad, n_pad), mask_function)
        self._bq, self._bk = pattern.block_q, pattern.block_kv
        # Tile classes of whole tiles inside the pattern (row-major bytes: fast lookups).
        whole = pattern.block_mask[: n // self._bq, : n // self._bk]
        self._rows = [row.tobytes() for row in whole]
        self._tiles = {}
        for status, value in ((EMPTY, False), (FULL, True)):
            tile = np.full((self._bq, self._bk), value).view(_UniformTile)
            tile.value, tile.flags.writeable = value, False
            self._tiles[status] = tile

    def __getitem__(self, idx) -> np.ndarray:
        try:  # splash's own reads: whole tiles, `[i*bq:(i+1)*bq, j*bk:(j+1)*bk]`
            q, k = idx
            i, r = divmod(q.start, self._bq)
            j, c = divmod(k.start, self._bk)
            if (
                r
                or c
                or q.start < 0
                or k.start < 0
                or q.step not in (None, 1)
                or k.step not in (None, 1)
                or q.stop - q.start != self._bq
                or k.stop - k.start != self._bk
            ):
                raise ValueError
            tile = self._tiles.get(self._rows[i][j])
        except (TypeError, ValueError, IndexError, AttributeError):
            tile = None
        return tile if tile is not None else super().__getitem__(idx)

    def __eq__(self, other: object):
        return type(other) is type(self) and self.shape == other.shape and self.pattern.layout == other.pattern.layout

    def __hash__(self):
        return hash((type(self), self.shape, self.pattern.layout))


@functools.lru_cache(maxsize=8)
def _splash_mask(pattern: BlockPattern):
    if pattern.layout is None:
        raise ValueError(
            "splash attention needs a pattern built from a Layout (Layout.pattern), "
            "whose mask it can compute inside the kernel"
        )
    return SplashPatternMask(pattern, splash_sizes(pattern)[2])


def _splash_kernel(pattern: BlockPattern, num_heads: int, interpret: bool):
    # Built per trace: the kernel holds jax arrays, which must not outlive a trace.
    # The expensive numpy mask processing is cached inside splash itself.
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    bq, bk, _ = splash_sizes(pattern)
    mask = _splash_mask(pattern)
    sizes = sa.BlockSizes(
        block_q=bq,
        block_kv=bk,
        block_kv_compute=bk,
        block_q_dkv=bq,
        block_kv_dkv=bk,
        block_kv_dkv_compute=bk,
        block_q_dq=bq,
        block_kv_dq=bk,
    )
    heads = sa.MultiHeadMask([mask] * num_heads)
    return sa.make_splash_mha(heads, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def splash_attention(q, k, v, pattern: BlockPattern, interpret: bool | None = None, segment_ids=None):
    """TPU splash attention with the pattern's mask (computed, not stored), padded to whole blocks.

    segment_ids `[B, N]` (optional): pairs only within one segment (splash's `SegmentIds`).
    Under a multi-device mesh (`jax.set_mesh` plus flax logical-axis rules, as the trainer
    sets them) the kernel runs per shard in a `shard_map`: batch and heads split as the rules
    say, the sequence whole (as MaxText wraps it).
    """
    local = functools.partial(_splash_local, pattern=pattern, interpret=interpret)
    args = (q, k, v) if segment_ids is None else (q, k, v, jnp.asarray(segment_ids, jnp.int32))
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return local(*args)
    rules = nn.get_logical_axis_rules()
    if not rules:
        return local(*args)
    qspec = nn.logical_to_mesh_axes((axes.ACTIVATION_BATCH, None, axes.ACTIVATION_HEADS, None), rules)
    kvspec = nn.logical_to_mesh_axes((axes.ACTIVATION_BATCH, None, axes.ACTIVATION_KV_HEADS, None), rules)
    segspec = nn.logical_to_mesh_axes((axes.ACTIVATION_BATCH, None), rules)
    in_specs = (qspec, kvspec, kvspec) + ((segspec,) if segment_ids is not None else ())
    return jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=qspec, check_vma=False)(*args)


def _splash_local(q, k, v, segment_ids=None, *, pattern: BlockPattern, interpret: bool | None):
    if interpret is None:
        interpret = jax.default_backend() != "tpu"
    b, n, h, d = q.shape
    _, _, n_pad = splash_sizes(pattern)
    kernel = _splash_kernel(pattern, h, interpret)
    pad = lambda x: jnp.pad(x.transpose(0, 2, 1, 3), ((0, 0), (0, 0), (0, n_pad - n), (0, 0)))  # noqa: E731
    q_scaled = q * jnp.asarray(d**-0.5, q.dtype)
    if segment_ids is None:
        out = jax.vmap(kernel)(pad(q_scaled), pad(k), pad(v))
    else:
        from jax.experimental.pallas.ops.tpu.splash_attention import SegmentIds

        seg = jnp.pad(jnp.asarray(segment_ids, jnp.int32), ((0, 0), (0, n_pad - n)), constant_values=-1)
        out = jax.vmap(lambda q_, k_, v_, s_: kernel(q_, k_, v_, segment_ids=SegmentIds(q=s_, kv=s_)))(
            pad(q_scaled), pad(k), pad(v), seg
        )
    return out[:, :, :n].transpose(0, 2, 1, 3).astype(q.dtype)
