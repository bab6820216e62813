"""Pictures: attention masks with their block patterns, and loss curves of training runs.

Figures are built with matplotlib's object API (no pyplot state, no backend switch), so
the same calls save PNGs from scripts and display inline in notebooks:

    from phd_jax import plotting
    plotting.plot_masks(["vanilla", "PHD-3", "PHD-CSWA-3-4-8"], path="masks.png")
    plotting.plot_metrics(["runs/vanilla", "runs/cswa"], path="loss.png", x="tokens")

Layer: beside `train` and `evaluation` (the curves read run directories through
`phd_jax.train`, imported on first use so that mask pictures need no training stack);
nothing below imports this module.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np

from phd_jax.config import ModelConfig
from phd_jax.errors import as_int, fail, one_of

SAVE_DPI = 110  # resolution of saved PNGs
X_AXES = {"step": "step", "tokens": "tokens (original, cumulative)", "flops": "training FLOPs"}


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _as_cfg(model) -> ModelConfig:
    """A ModelConfig given as itself or by its paper name."""
    if isinstance(model, ModelConfig):
        return model
    if isinstance(model, str):
        return ModelConfig.from_name(model)
    fail("plot_masks model", model, "must be a ModelConfig or a paper name like 'PHD-CSWA-3-4-8'", TypeError)


def draw_mask(ax, model, seq_len: int = 24, kind: str = "paper", block: int = 8):
    """Draw one layout's mask on `ax`; in the kernel layout, outline the tiles a kernel computes."""
    from matplotlib.patches import Rectangle

    from phd_jax.masks import EMPTY, FULL, Layout

    cfg = _as_cfg(model)
    seq_len, block = as_int("seq_len", seq_len, 1), as_int("block", block, 1)
    layout = Layout.for_config(cfg, seq_len, kind)
    ax.imshow(layout.mask, cmap="Greys", interpolation="nearest")
    ax.set_xticks([]), ax.set_yticks([])
    if kind != "kernel":
        ax.set_title(
            f"{cfg.name}, {kind} layout (T={seq_len}, K={cfg.repeat})\n{int(layout.mask.sum())} allowed pairs",
            fontsize=9,
        )
        return layout
    pattern = layout.pattern(block, block)
    for (i, j), state in np.ndenumerate(pattern.block_mask):
        if state != EMPTY:
            ax.add_patch(
                Rectangle(
                    (j * block - 0.5, i * block - 0.5),
                    block,
                    block,
                    fill=False,
                    lw=1,
                    ec="tab:green" if state == FULL else "tab:orange",
                )
            )
    if layout.band_start is not None:  # the border between originals and hidden tokens
        ax.axhline(layout.band_start - 0.5, color="tab:blue", lw=0.8)
        ax.axvline(layout.band_start - 0.5, color="tab:blue", lw=0.8)
    order = "[originals | hidden]" if layout.band_start is not None else "(= paper layout)"
    ax.set_title(
        f"{cfg.name}, kernel layout {order}\n{pattern.num_nonempty}/"
        f"{pattern.num_blocks} tiles of {block}x{block} computed (green full, orange partial)",
        fontsize=9,
    )
    return layout


def plot_masks(models: Iterable, seq_len: int = 24, block: int = 8, path: str | None = None):
    """One column per model (a `ModelConfig` or a paper name): the paper layout's mask on
    top, the kernel layout with its block pattern below. Saves a PNG to `path` if given."""
    cfgs = [_as_cfg(m) for m in models]
    if not cfgs:
        fail("plot_masks models", cfgs, "must name at least one model")
    fig = _figure(4.4 * len(cfgs), 8.6)
    axes = fig.subplots(2, len(cfgs), squeeze=False)
    for col, cfg in enumerate(cfgs):
        for row, kind in enumerate(["paper", "kernel"]):
            draw_mask(axes[row, col], cfg, seq_len, kind, block)
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------------------
# Training curves
# ---------------------------------------------------------------------------


def run_label(workdir: str) -> str:
    """The model's paper name from `WORKDIR/model_config.json`, else the directory's name."""
    from phd_jax.train.checkpoint import load_model_config

    try:
        return load_model_config(workdir).name
    except (ValueError, TypeError):  # no model_config.json, or an older / foreign one
        return os.path.basename(os.path.normpath(workdir))


def plot_metrics(
    workdirs: Sequence[str],
    path: str | None = None,
    x: str = "step",
    metric: str = "loss",
    labels: Sequence[str] | None = None,
    title: str | None = None,
    log_x: bool | None = None,
):
    """`metric` against `x` (`step`, `tokens` or `flops`) for one or several runs' `metrics.jsonl`
    on one chart, labelled with the models' names. Saves a PNG to `path` if given."""
    from phd_jax.train.metrics import read_metrics, series

    one_of("x", x, tuple(X_AXES))
    if isinstance(workdirs, str):
        workdirs = [workdirs]
    if not workdirs:
        fail("workdirs", workdirs, "must name at least one run directory")
    if labels is not None and len(labels) != len(workdirs):
        fail("labels", labels, f"must give one label per workdir ({len(workdirs)})")
    labels = list(labels) if labels is not None else [run_label(w) for w in workdirs]
    if len(set(labels)) < len(labels):  # same model in several runs: say which run is which
        labels = [f"{lab} ({os.path.basename(os.path.normpath(w))})" for lab, w in zip(labels, workdirs)]
    fig = _figure(7, 4.5)
    ax = fig.subplots()
    plotted = 0
    for workdir, label in zip(workdirs, labels):
        xs, ys = series(read_metrics(workdir), metric, x)
        if len(xs):
            ax.plot(xs, ys, marker="o" if len(xs) < 20 else None, ms=3, label=label)
            plotted += 1
    if not plotted:
        fail("metric", metric, f"is not logged against {x!r} in any of {list(workdirs)}")
    ax.set_xlabel(X_AXES[x])
    ax.set_ylabel(metric)
    if log_x if log_x is not None else x == "flops":
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title or f"{metric} vs {x}")
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path):
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fig.savefig(path, dpi=SAVE_DPI)
    return fig
