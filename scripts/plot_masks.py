"""Draw PHD masks in the paper's interleaved layout and in the kernel layout, with the
block-sparse tiles the kernel computes.   python scripts/plot_masks.py [--out docs/masks.png]"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from phd_jax import ModelConfig  # noqa: E402
from phd_jax.masks import EMPTY, FULL, Layout  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="docs/masks.png")
    a = p.parse_args()
    T, block = 24, 8
    names = ["PHD-3", "PHD-SWA-3-4-inf", "PHD-CSWA-3-4-8"]
    fig, axes = plt.subplots(2, 3, figsize=(13, 8.6))
    for col, name in enumerate(names):
        cfg = ModelConfig.from_name(name)
        for row, kind in enumerate(["paper", "kernel"]):
            lay = Layout.for_config(cfg, T, kind)
            ax = axes[row, col]
            ax.imshow(lay.mask, cmap="Greys", interpolation="nearest")
            if kind == "kernel":
                pat = lay.pattern(block, block)
                for (i, j), st in np.ndenumerate(pat.block_mask):
                    if st != EMPTY:
                        ax.add_patch(plt.Rectangle((j * block - .5, i * block - .5), block, block, fill=False,
                                                   ec="tab:green" if st == FULL else "tab:orange", lw=1))
                ax.axhline(T - .5, color="tab:blue", lw=.8)
                ax.axvline(T - .5, color="tab:blue", lw=.8)
                title = (f"{name}, kernel layout [originals | hidden]\n{pat.num_nonempty}/{pat.num_blocks} "
                         f"tiles of {block}x{block} computed (green full, orange partial)")
            else:
                title = f"{name}, paper layout (T={T}, K=3)\n{int(lay.mask.sum())} allowed pairs"
            ax.set_title(title, fontsize=9)
            ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    fig.savefig(a.out, dpi=110)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
