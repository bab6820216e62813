"""Cost of building static block patterns, and of splash's mask preprocessing, vs T (K = 4).

`Layout.for_config(config, T, "kernel").pattern(128, 128)` derives the pattern per query
block from closed-form row spans of `allowed`, never as a dense `[N, N]` mask (N = T*K).
For each T and variant: build time (the pattern plus the blocksparse kernel's loop tables,
`phd_jax.attention.tables.tile_tables`, which it builds from the pattern's layout), peak host
memory (tracemalloc, a separate build), non-empty tiles; next to it, for small T, the old path
(dense mask, then classified).
Then splash's host-side mask preprocessing (`process_mask` for forward / dQ and
`process_mask_dkv`: a Python loop over all (N / 128)^2 tiles) with the computable mask.

    python benchmarks/patterns.py                       # writes benchmarks/results/patterns.md
    python benchmarks/patterns.py --seq 1024 4096 --splash-seq 4096
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import tracemalloc

from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as mask_lib
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask_info as mask_info

try:  # python -m benchmarks.patterns from the checkout
    from benchmarks.common import markdown_table, reference_pattern
except ImportError:  # python benchmarks/patterns.py: the script's directory comes first on the path
    from common import markdown_table, reference_pattern
from phd_jax.attention.splash import SplashPatternMask, splash_sizes
from phd_jax.attention.tables import tile_tables
from phd_jax.config import ModelConfig
from phd_jax.masks import BlockPattern, Layout

NAMES = ["PHD-4", "PHD-SWA-4-16-inf", "PHD-CSWA-4-16-32"]
BLOCK = 128


def _fresh_layout(name: str, t: int) -> Layout:
    """A new Layout object (not the cached one), so nothing is reused between builds."""
    cfg = ModelConfig.from_name(name)
    return Layout("kernel", cfg.variant, t, cfg.repeat, cfg.effective_window, cfg.effective_chunk)


def _build(name: str, t: int) -> BlockPattern:
    pattern = BlockPattern.from_layout(_fresh_layout(name, t), BLOCK, BLOCK)
    tile_tables(pattern)  # what blocksparse builds from it (once per pattern, cached)
    return pattern


def _build_dense(name: str, t: int) -> BlockPattern:
    return reference_pattern(_fresh_layout(name, t), BLOCK, BLOCK)


def measure(build, name: str, t: int, reps: int):
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        pattern = build(name, t)
        times.append(time.perf_counter() - t0)
    tracemalloc.start()
    build(name, t)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return sorted(times)[len(times) // 2], peak, pattern


def splash_preprocessing(name: str, t: int) -> tuple[float, float]:
    pattern = BlockPattern.from_layout(_fresh_layout(name, t), BLOCK, BLOCK)
    _, _, n_pad = splash_sizes(pattern)
    heads = mask_lib.MultiHeadMask([SplashPatternMask(pattern, n_pad)] * 8)
    mask_info._process_mask.cache_clear()  # splash caches by mask: time a cold start
    t0 = time.perf_counter()
    mask_info.process_mask(heads, (BLOCK, BLOCK))  # forward; dQ hits its cache
    t1 = time.perf_counter()
    mask_info.process_mask_dkv(heads, (BLOCK, BLOCK))
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 32768, 65536])
    p.add_argument(
        "--dense-seq", type=int, nargs="+", default=[1024, 2048], help="T at which to also time the old dense-mask path"
    )
    p.add_argument("--splash-seq", type=int, nargs="+", default=[4096, 8192, 16384, 32768])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "patterns.md"))
    args = p.parse_args()

    rows = []
    for t in args.seq:
        for name in NAMES:
            secs, peak, pattern = measure(_build, name, t, args.reps)
            row = [
                name,
                t,
                4 * t,
                pattern.num_nonempty,
                f"{pattern.nonempty_fraction:.4f}",
                f"{secs:.3f}",
                f"{peak / 2**20:.1f}",
                "",
                "",
            ]
            if t in args.dense_seq:
                d_secs, d_peak, d_pattern = measure(_build_dense, name, t, 1)
                assert d_pattern.num_nonempty == pattern.num_nonempty
                row[-2:] = [f"{d_secs:.3f}", f"{d_peak / 2**20:.1f}"]
            rows.append(row)
            print(*row, flush=True)
    build_table = markdown_table(
        [
            "model",
            "T",
            "N = T*K",
            "non-empty tiles",
            "fraction",
            "build s",
            "peak MiB",
            "dense path s",
            "dense path MiB",
        ],
        rows,
    )

    splash_rows = []
    for t in args.splash_seq:
        for name in NAMES if t == max(args.splash_seq) else NAMES[-1:]:
            fwd, dkv = splash_preprocessing(name, t)
            splash_rows.append([name, t, 4 * t, (4 * t // BLOCK) ** 2, f"{fwd:.1f}", f"{dkv:.1f}", f"{fwd + dkv:.1f}"])
            print(*splash_rows[-1], flush=True)
    splash_table = markdown_table(["model", "T", "N", "tiles", "fwd + dQ s", "dKV s", "total s"], splash_rows)

    cmd = "python benchmarks/patterns.py " + " ".join(sys.argv[1:])
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    text = f"""# Static block patterns without N x N memory

`{cmd.strip()}` on {platform.machine()}, {os.cpu_count()} CPU cores (shared: load average
{load} at the end of the run, so times are upper bounds), K = 4,
tiles {BLOCK} x {BLOCK}, kernel layout. Build = `BlockPattern.from_layout` on a fresh layout
(what `Layout.for_config(config, T, "kernel").pattern(128, 128)` caches) plus the blocksparse
kernel's loop tables (`tile_tables`); median of {args.reps} builds; peak = tracemalloc peak of
one more build.
"dense path" = the old way (dense `[N, N]` mask, classified), only at small T.

{build_table}

## Splash mask preprocessing

Splash's own host-side preprocessing of the computable `SplashPatternMask` (its Python loop
over every tile: each tile read twice per call), cold cache, 8 heads sharing one mask. The kernel
evaluates the mask from `allowed` on partial tiles, so no partial mask blocks are stored.

{splash_table}
"""
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
