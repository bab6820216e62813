"""Forward+backward time of the `dense` and `blocksparse` attention backends.

For each variant, T and K: the fraction of non-empty tiles of the static
pattern, both backends' times, blocksparse's speed-up over dense, and its
time relative to vanilla (K = 1, blocksparse) at the same T, all from one run.
With `--dpa`, also `jax.nn.dot_product_attention` (JAX's own fused attention:
cuDNN or XLA, whichever it picks) on the same dense boolean mask: what a user
would reach for without this project.

    python benchmarks/attention.py                  # T in {512, 1024}, K in {1, 2, 4}
    python benchmarks/attention.py --seq 256 --repeat 1 2
    python benchmarks/attention.py --dpa --dtype bfloat16 --seq 1024 2048   # on a GPU
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

try:  # python -m benchmarks.X from the checkout
    from benchmarks.common import markdown_table, time_fn
except ImportError:  # python benchmarks/X.py: the script's directory comes first on the path
    from common import markdown_table, time_fn
from phd_jax.attention import blocksparse_attention, dense_attention
from phd_jax.config import ModelConfig
from phd_jax.hostmem import reexec_with_tuned_malloc
from phd_jax.masks import Layout

VARIANTS = {  # name -> (variant, window, chunk), PHD-SWA/CSWA as in the paper's tables
    "vanilla": ("vanilla", 0, None),
    "naive": ("naive", 0, None),
    "phd": ("phd", 0, None),
    "phd_swa": ("phd_swa", 16, None),
    "phd_cswa": ("phd_cswa", 16, 32),
}


def loss_and_grad(attn):
    def loss(q, k, v, ct):
        return jnp.vdot(attn(q, k, v).astype(jnp.float32), ct)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


def dpa_attention(q, k, v, mask):
    """`jax.nn.dot_product_attention` with a dense `[N, N]` boolean mask (implementation: JAX's choice)."""
    return jax.nn.dot_product_attention(q, k, v, mask=jnp.asarray(mask)[None, None])


def run(seqs, repeats, heads, kv_heads, head_dim, block, reps, dtype="float32", dpa=False):
    rows, vanilla_time = [], {}
    for t in seqs:
        for variant, window, chunk in VARIANTS.values():
            for k in repeats:
                if (variant == "vanilla") != (k == 1):
                    continue
                cfg = ModelConfig(
                    variant=variant,
                    repeat=k,
                    window=window,
                    chunk=chunk,
                    num_heads=heads,
                    num_kv_heads=kv_heads,
                    head_dim=head_dim,
                    block_q=block,
                    block_kv=block,
                    max_seq_len=t,
                )
                n = t * k
                keys = jax.random.split(jax.random.key(0), 4)
                q = jax.random.normal(keys[0], (1, n, heads, head_dim), dtype)
                kk = jax.random.normal(keys[1], (1, n, kv_heads, head_dim), dtype)
                v = jax.random.normal(keys[2], (1, n, kv_heads, head_dim), dtype)
                ct = jax.random.normal(keys[3], (1, n, heads, head_dim), jnp.float32)
                paper = Layout.for_config(cfg, t, "paper")
                kernel = Layout.for_config(cfg, t, "kernel")
                pattern = kernel.pattern(block, block)
                t_dense = time_fn(
                    loss_and_grad(lambda q, k, v: dense_attention(q, k, v, paper.mask)), q, kk, v, ct, repeats=reps
                )
                t_sparse = time_fn(
                    loss_and_grad(lambda q, k, v: blocksparse_attention(q, k, v, pattern)), q, kk, v, ct, repeats=reps
                )
                if variant == "vanilla":
                    vanilla_time[t] = t_sparse
                extra = []
                if dpa:
                    t_dpa = time_fn(
                        loss_and_grad(lambda q, k, v: dpa_attention(q, k, v, paper.mask)), q, kk, v, ct, repeats=reps
                    )
                    extra = [f"{t_dpa * 1e3:.1f}", f"{t_dpa / t_sparse:.2f}x"]
                rows.append(
                    [
                        cfg.name,
                        t,
                        k,
                        n,
                        f"{pattern.nonempty_fraction:.3f}",
                        f"{t_dense * 1e3:.1f}",
                        f"{t_sparse * 1e3:.1f}",
                        f"{t_dense / t_sparse:.2f}x",
                        f"{t_sparse / vanilla_time[t]:.2f}x",
                    ]
                    + extra
                )
                print(markdown_table(headers(dpa), rows[-1:]).splitlines()[-1], flush=True)
    return rows


HEADERS = [
    "model",
    "T",
    "K",
    "tokens",
    "non-empty tiles",
    "dense ms",
    "blocksparse ms",
    "dense / blocksparse",
    "blocksparse / vanilla",
]


def headers(dpa: bool) -> list[str]:
    return HEADERS + (["jax.nn.dpa ms", "dpa / blocksparse"] if dpa else [])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq", type=int, nargs="+", default=[512, 1024])
    p.add_argument("--repeat", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--dpa", action="store_true", help="also time jax.nn.dot_product_attention on the dense mask")
    p.add_argument("--out", default=None, help="also write the markdown table to this file")
    a = p.parse_args(argv)
    title = (
        f"# attention fwd+bwd, batch 1, {a.heads} heads / {a.kv_heads} kv heads, head_dim "
        f"{a.head_dim}, tiles {a.block}x{a.block}, {a.dtype}, {jax.devices()[0].device_kind}, median of {a.reps}"
    )
    print(title)
    print(markdown_table(headers(a.dpa), []))
    rows = run(a.seq, a.repeat, a.heads, a.kv_heads, a.head_dim, a.block, a.reps, a.dtype, a.dpa)
    if a.out:
        with open(a.out, "w") as f:
            f.write(title + "\n\n" + markdown_table(headers(a.dpa), rows) + "\n")


if __name__ == "__main__":
    reexec_with_tuned_malloc()  # phd_jax/hostmem.py: reuse XLA:CPU's temporaries
    main()
