"""Attention backends and their dispatch. All consume the same static masks from `phd_jax.masks`.

- `dense` (`dense.py`): the literal reference; the full mask and a plain masked softmax.
- `blocksparse` (`blocksparse.py`, its static loop tables in `tables.py`): pure JAX/XLA,
  flash-style; loops over the non-empty tiles of the static block pattern (masks only on
  partial tiles; PHD's hidden-to-hidden band in narrow sub-blocks), recomputes them in a
  custom backward pass: bounded compile time, O(N) memory. Default on CPU and GPU.
- `splash` (`splash.py`, imported only when used): the TPU Pallas splash-attention kernel
  fed with the same mask. Default on TPU; elsewhere it runs in Pallas interpret mode (tests).

The backend names are `phd_jax.config.BACKENDS` (`ModelConfig.attention`), plain strings.

Shapes everywhere: q `[B, N, H, D]`, k/v `[B, N, KVH, D]` (grouped-query
attention: H is a multiple of KVH), output `[B, N, H, D]`.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np

from phd_jax.attention.blocksparse import SegmentMask, blocksparse_attention
from phd_jax.attention.dense import MASK_VALUE, combine, dense_attention, partial_attention
from phd_jax.config import BACKENDS, ModelConfig
from phd_jax.masks import Layout

__all__ = [
    "BACKENDS",
    "MASK_VALUE",
    "SegmentMask",
    "SplashPatternMask",
    "attend",
    "blocksparse_attention",
    "chunks_matter",
    "combine",
    "dense_attention",
    "layout_kind",
    "partial_attention",
    "resolve_backend",
    "segment_mask",
    "splash_attention",
    "splash_sizes",
    "static_config",
]


def resolve_backend(name: str) -> str:
    """A name of `BACKENDS`; `auto` picks `splash` on TPU and `blocksparse` elsewhere."""
    if name == "auto":
        return "splash" if jax.default_backend() == "tpu" else "blocksparse"
    return name


def layout_kind(cfg: ModelConfig) -> str:
    """The token order a backend runs in: the literal paper layout for `dense`."""
    return "paper" if resolve_backend(cfg.attention) == "dense" else "kernel"


def chunks_matter(cfg: ModelConfig) -> bool:
    """Whether the chunk rule can remove a pair (phd_cswa with hidden tokens and a window)."""
    return cfg.effective_chunk is not None and cfg.effective_window >= 1


def static_config(cfg: ModelConfig, has_segments: bool) -> ModelConfig:
    """The config whose static pattern a backend runs. With packed documents (segment ids),
    chunks count from each document's start, which only the run-time mask knows: phd_cswa runs
    phd_swa's static pattern (a superset) and the run-time mask cuts the chunks (docs/spec.md section 3)."""
    if has_segments and chunks_matter(cfg):
        return cfg.replace(variant="phd_swa", chunk=None)
    return cfg


def segment_mask(cfg: ModelConfig, layout: Layout, segments) -> SegmentMask | None:
    """`SegmentMask` of the packed-documents rule for token indices of `layout`
    (`mask(rows, cols) -> [B, *rows x cols]`, numpy or jax index arrays), or None without segments.

    segments: `(segment_ids, offsets)`, each `[B, N]` in `layout`'s token order
    (`model.segment_positions`), or None."""
    if segments is None:
        return None
    segment_ids, offsets = segments
    return SegmentMask(
        jnp.asarray(segment_ids),
        jnp.asarray(offsets),
        jnp.asarray(layout.tokens[1]),
        cfg.variant,
        cfg.repeat,
        cfg.effective_window,
        cfg.effective_chunk,
    )


def attend(q, k, v, layout: Layout, cfg: ModelConfig, segments=None):
    """Masked attention over the static `layout`, with the backend `cfg.attention` picks.

    segments: None, or `(segment_ids, offsets)` `[B, N]` per token of `layout` (packed
    documents): a run-time mask on top of the static pattern (`layout` is then `static_config`'s)."""
    backend = resolve_backend(cfg.attention)
    runtime_mask = segment_mask(cfg, layout, segments)
    if backend == "dense":
        if runtime_mask is None:
            return dense_attention(q, k, v, layout.mask)
        n = np.arange(layout.size)
        return dense_attention(q, k, v, runtime_mask(n[:, None], n[None, :]) & layout.mask)
    pattern = layout.pattern(cfg.block_q, cfg.block_kv)
    if backend == "blocksparse":
        return blocksparse_attention(q, k, v, pattern, runtime_mask)
    if backend != "splash":
        raise ValueError(f"attention={cfg.attention!r} is invalid: allowed: {', '.join(BACKENDS)}")
    if segments is not None and chunks_matter(cfg):
        raise ValueError(
            f"attention='splash' with segment_ids cannot count {cfg.name}'s chunks "
            f"from each document's start: use attention='blocksparse' or 'dense' "
            f"for document masking with phd_cswa"
        )
    from phd_jax.attention.splash import splash_attention  # noqa: PLC0415 (loads splash only when used)

    return splash_attention(q, k, v, pattern, segment_ids=None if segments is None else segments[0])


_SPLASH_NAMES = ("SplashPatternMask", "splash_attention", "splash_sizes")
_DEPRECATED = {"DocumentMask": "SegmentMask", "document_mask": "segment_mask"}


def __getattr__(name: str):
    """The splash adapter's names, imported on first use (splash's modules load only then),
    and the deprecated names of 0.1."""
    if name in _SPLASH_NAMES:
        from phd_jax.attention import splash  # noqa: PLC0415

        return getattr(splash, name)
    if name in _DEPRECATED:
        new = _DEPRECATED[name]
        warnings.warn(
            f"phd_jax.attention.{name} is deprecated: use phd_jax.attention.{new}", DeprecationWarning, stacklevel=2
        )
        return globals()[new]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
