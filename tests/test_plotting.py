"""Plots: masks of every variant and loss curves of several runs become PNGs (library and scripts)."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.image import imread

from phd_jax import plotting
from tests.helpers import VARIANT_GRID, named_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script(name, *args, cwd):
    env = {**os.environ, "PYTHONPATH": REPO}  # what the editable install of scripts/venv.sh provides
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", name), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _assert_png(path, min_pixels=100_000):
    image = imread(path)
    assert image.shape[0] * image.shape[1] >= min_pixels
    assert np.ptp(image[..., :3]) > 0.5, "blank image"  # something dark drawn on white


def _write_run(workdir, config, records):
    os.makedirs(workdir)
    with open(os.path.join(workdir, "model_config.json"), "w") as f:
        json.dump(dataclasses.asdict(config), f)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two hand-written runs: a vanilla and a PHD-CSWA model, loss every 10 steps, val_loss every 20."""
    root = tmp_path_factory.mktemp("runs")
    out = []
    for name, variant, scale in (
        ("a", dict(variant="vanilla", repeat=1), 1.0),
        ("b", dict(variant="phd_cswa", repeat=3, window=4, chunk=8), 0.9),
    ):
        records = [
            dict(
                step=s,
                loss=scale * 3 / np.sqrt(s),
                tokens=s * 2048,
                flops=s * 1e9 * (1 + 2 * (scale < 1)),
                **({"val_loss": scale * 3.1 / np.sqrt(s)} if s % 20 == 0 else {}),
            )
            for s in range(10, 101, 10)
        ]
        _write_run(str(root / name), named_config("vanilla").replace(**variant), records)
        out.append(str(root / name))
    return out


def test_masks_of_every_variant(tmp_path):
    names = list(VARIANT_GRID)
    for name in names:
        path = str(tmp_path / f"{name}.png")
        fig = plotting.plot_masks([named_config(name)], seq_len=12, block=4, path=path)
        _assert_png(path, 50_000)
        titles = [ax.get_title() for ax in fig.axes]
        assert all(t.startswith(named_config(name).name) for t in titles), titles
    r = _script(
        "plot_masks.py", "--out", "m/masks.png", "--models", "vanilla", "naive-2", "PHD-CSWA-3-4-8", cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    _assert_png(str(tmp_path / "m" / "masks.png"))


def test_kernel_layout_counts_the_tiles_it_draws():
    fig = plotting.plot_masks(["PHD-CSWA-3-4-8"], seq_len=24, block=8)
    from phd_jax.masks import Layout

    pattern = Layout.for_config(named_config("PHD-CSWA-3-4-8"), 24, "kernel").pattern(8, 8)
    kernel_ax = fig.axes[1]
    assert len(kernel_ax.patches) == pattern.num_nonempty < pattern.num_blocks
    assert f"{pattern.num_nonempty}/{pattern.num_blocks} tiles" in kernel_ax.get_title()


def test_loss_curves_of_two_runs(runs, tmp_path):
    fig = plotting.plot_metrics(runs, str(tmp_path / "loss.png"))
    _assert_png(str(tmp_path / "loss.png"))
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["vanilla", "PHD-CSWA-3-4-8"]
    xs, ys = ax.lines[1].get_data()
    assert list(xs) == list(range(10, 101, 10)) and ys[0] == pytest.approx(0.9 * 3 / np.sqrt(10))
    # val_loss only where logged; tokens on the x axis.
    ax = plotting.plot_metrics(runs, x="tokens", metric="val_loss").axes[0]
    assert list(ax.lines[0].get_data()[0]) == [s * 2048 for s in (20, 40, 60, 80, 100)]
    r = _script("plot_metrics.py", *runs, "-o", "flops.png", "--x", "flops", "--metric", "val_loss", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    _assert_png(str(tmp_path / "flops.png"))


def test_labels_fall_back_to_the_directory(runs, tmp_path):
    os.makedirs(tmp_path / "plain")
    with open(tmp_path / "plain" / "metrics.jsonl", "w") as f:
        f.write(json.dumps(dict(step=1, loss=2.0)) + "\n" + json.dumps(dict(step=2, loss=1.5)) + '\n{"step": 3, ')
    ax = plotting.plot_metrics([runs[0], str(tmp_path / "plain")]).axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["vanilla", "plain"]
    assert list(ax.lines[1].get_data()[1]) == [2.0, 1.5]  # the torn last line is skipped
    ax = plotting.plot_metrics([runs[0], runs[0]]).axes[0]  # same model twice: runs named
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["vanilla (a)", "vanilla (a)"]


def test_bad_input_is_named(runs, tmp_path):
    with pytest.raises(ValueError, match="x='time' is invalid"):
        plotting.plot_metrics(runs, x="time")
    with pytest.raises(ValueError, match="metric='accuracy' is invalid"):
        plotting.plot_metrics(runs, metric="accuracy")
    with pytest.raises(FileNotFoundError, match="no metrics at"):
        plotting.plot_metrics([str(tmp_path)])
    r = _script("plot_metrics.py", str(tmp_path / "missing"), "-o", "x.png", cwd=tmp_path)
    assert r.returncode == 2 and "no metrics at" in r.stderr and "Traceback" not in r.stderr
    assert not os.path.exists(tmp_path / "x.png")


def test_curve_from_the_real_trainer(tmp_path):
    """A run written by the project's trainer plots like the hand-written ones, against every x."""
    from phd_jax.configs.tiny import get_config
    from phd_jax.train import train_and_evaluate

    c = get_config("PHD-CSWA-2-2-4")
    c.update(num_steps=4, log_every=2, eval_every=4, eval_batches=1, checkpoint_every=4, sample_tokens=0)
    train_and_evaluate(c, str(tmp_path / "run"), progress=False)
    for x in ("step", "tokens", "flops"):
        ax = plotting.plot_metrics([str(tmp_path / "run")], str(tmp_path / f"{x}.png"), x=x).axes[0]
        _assert_png(str(tmp_path / f"{x}.png"))
        assert len(ax.lines[0].get_data()[0]) == 2
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["PHD-CSWA-2-2-4"]
