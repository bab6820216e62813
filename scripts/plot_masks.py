"""Draw PHD masks in the paper's interleaved layout and in the kernel layout, with the
block-sparse tiles the kernel computes (`phd_jax.plotting.plot_masks`).

    python scripts/plot_masks.py [--out docs/masks.png] [--models PHD-3 PHD-CSWA-3-4-8 ...] [--seq-len 24]
"""

import argparse

from phd_jax.plotting import plot_masks


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="docs/masks.png", help="PNG to write")
    p.add_argument(
        "--models",
        nargs="+",
        default=["PHD-3", "PHD-SWA-3-4-inf", "PHD-CSWA-3-4-8"],
        help="paper names: vanilla, naive-K, PHD-K, PHD-SWA-K-W-inf, PHD-CSWA-K-W-C",
    )
    p.add_argument("--seq-len", type=int, default=24, help="positions T")
    p.add_argument("--block", type=int, default=8, help="tile size of the block pattern")
    a = p.parse_args()
    plot_masks(a.models, seq_len=a.seq_len, block=a.block, path=a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
