"""The `blocksparse` kernel against another version of it (e.g. a previous commit's), timed
interleaved in one process so that a shared machine's drift hits both alike.

Loads `blocksparse_attention` from `--previous` (a copy of an older `phd_jax/attention.py`)
and compares it with this checkout's on (a) one attention layer's forward+backward (batch 1,
8 / 2 heads, head_dim 64, tiles 128) and (b) a train step's loss gradient of the
performance issue's model (6 layers, d_model 512, 8 / 4 heads, SwiGLU 1536, vocab 4096,
batch 4, no optimizer), both at T = `--seq`. Medians of `--reps` rounds; "new / old" < 1 means
this checkout is faster.

    git show 96026d7:phd_jax/attention.py > old_attention.py
    python benchmarks/kernel_vs_previous.py --previous old_attention.py
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import jax
import jax.numpy as jnp

import phd_jax.attention as attention
from phd_jax import ModelConfig, forward, init_params
from phd_jax.hostmem import reexec_with_tuned_malloc
from phd_jax.masks import Layout

MODEL = dict(num_layers=6, d_model=512, num_heads=8, num_kv_heads=4, head_dim=64, mlp_dim=1536, vocab_size=4096)


def interleaved(fns: dict, args, reps: int) -> dict:
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - t0)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def layer(impls: dict, name: str, seq: int, reps: int) -> dict:
    cfg = ModelConfig.from_name(name, num_heads=8, num_kv_heads=2, head_dim=64)
    pattern = Layout.for_config(cfg, seq, "kernel").pattern(128, 128)
    n = seq * cfg.repeat
    ks = jax.random.split(jax.random.key(0), 4)
    args = [
        jax.random.normal(ks[0], (1, n, 8, 64)),
        jax.random.normal(ks[1], (1, n, 2, 64)),
        jax.random.normal(ks[2], (1, n, 2, 64)),
        jax.random.normal(ks[3], (1, n, 8, 64)),
    ]
    fns = {}
    for tag, impl in impls.items():
        loss = lambda q, k, v, ct, impl=impl: jnp.vdot(impl(q, k, v, pattern), ct)  # noqa: E731
        fns[tag] = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
        jax.block_until_ready(fns[tag](*args))
    return interleaved(fns, args, reps)


def train_step(impls: dict, name: str, seq: int, reps: int) -> dict:
    cfg = ModelConfig.from_name(name, **MODEL, max_seq_len=seq, attention="blocksparse")
    params = init_params(cfg, 0)
    tokens = jax.random.randint(jax.random.key(0), (4, seq), 0, MODEL["vocab_size"])

    def loss(p):
        logp = jax.nn.log_softmax(forward(p, cfg, tokens)[:, :-1].astype(jnp.float32))
        return -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1).mean()

    fns, current = {}, attention.blocksparse_attention
    try:
        for tag, impl in impls.items():  # `attend` looks the kernel up at trace time
            attention.blocksparse_attention = impl
            fns[tag] = jax.jit(jax.grad(loss))
            jax.block_until_ready(fns[tag](params))
    finally:
        attention.blocksparse_attention = current
    return interleaved(fns, (params,), reps)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--previous", required=True, help="path to an older phd_jax/attention.py")
    p.add_argument("--models", nargs="+", default=["vanilla", "PHD-2", "PHD-4", "PHD-CSWA-4-16-32"])
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--reps", type=int, default=5)
    a = p.parse_args(argv)
    spec = importlib.util.spec_from_file_location("previous_attention", a.previous)
    previous = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(previous)
    impls = {"old": previous.blocksparse_attention, "new": attention.blocksparse_attention}
    print("| model | T | what | old s | new s | new / old |\n|---|---|---|---|---|---|", flush=True)
    for name in a.models:
        for what, fn in (("attention layer fwd+bwd", layer), ("train-step gradient", train_step)):
            t = fn(impls, name, a.seq, a.reps)
            print(
                f"| {name} | {a.seq} | {what} | {t['old']:.4f} | {t['new']:.4f} | {t['new'] / t['old']:.2f}x |",
                flush=True,
            )


if __name__ == "__main__":
    reexec_with_tuned_malloc()  # phd_jax/hostmem.py: reuse XLA:CPU's temporaries
    main()
