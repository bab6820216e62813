"""Long context with the `blocksparse` kernel: compile time vs T*K, and one layer's
forward+backward at long T (time, peak host memory, time per allowed (query, key) pair).

One attention layer (batch 1, heads as `benchmarks/attention.py`: 8 query / 2 kv heads,
head_dim 64, tiles 128x128), loss = <attention(q, k, v), random cotangent>, gradients
for q, k and v, jitted.

- Compile: trace + XLA compile of forward+backward (no persistent compilation cache) for
  each T*K, and its ratio to the smallest.
- Long context: each T runs in its own subprocess (so its peak RSS, `ru_maxrss`, is its
  own): compile + first step, then the median of `--reps` steps; allowed pairs from
  `phd_jax.flops.attention_pairs`; ns per allowed pair, and its ratio to the first T.

    python benchmarks/long_context.py                      # PHD-4: T*K 4096..32768; T 1024, 8192
    python benchmarks/long_context.py --tokens 4096 16384 --seq 1024 --reps 1 --out l.md
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("JAX_ENABLE_COMPILATION_CACHE", "false")  # time real compiles

import jax
import jax.numpy as jnp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
try:  # python -m benchmarks.long_context from the checkout
    from benchmarks.common import markdown_table, time_fn
except ImportError:  # python benchmarks/long_context.py: the script's directory comes first on the path
    from common import markdown_table, time_fn
from phd_jax.attention import blocksparse_attention
from phd_jax.config import ModelConfig
from phd_jax.flops import attention_pairs
from phd_jax.hostmem import reexec_with_tuned_malloc
from phd_jax.masks import Layout

HEADS, KV_HEADS, HEAD_DIM, BLOCK = 8, 2, 64, 128


def model_config(name: str, seq_len: int) -> ModelConfig:
    return ModelConfig.from_name(
        name,
        num_heads=HEADS,
        num_kv_heads=KV_HEADS,
        head_dim=HEAD_DIM,
        block_q=BLOCK,
        block_kv=BLOCK,
        max_seq_len=seq_len,
    )


def layer_step(config: ModelConfig, seq_len: int):
    """`(jitted loss-and-grads of one blocksparse layer, argument shapes)`."""
    pattern = Layout.for_config(config, seq_len, "kernel").pattern(config.block_q, config.block_kv)

    def loss(q, k, v, ct):
        return jnp.vdot(blocksparse_attention(q, k, v, pattern).astype(jnp.float32), ct)

    n = seq_len * config.repeat
    shapes = [(1, n, HEADS, HEAD_DIM), (1, n, KV_HEADS, HEAD_DIM), (1, n, KV_HEADS, HEAD_DIM), (1, n, HEADS, HEAD_DIM)]
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))), shapes


def compile_stats(name: str, seq_len: int) -> dict:
    """Trace + compile seconds of forward+backward, and XLA's memory analysis (bytes)."""
    step, shapes = layer_step(model_config(name, seq_len), seq_len)
    t0 = time.perf_counter()
    compiled = step.lower(*(jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes)).compile()
    seconds = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    return {
        "compile_s": seconds,
        "temp_bytes": mem.temp_size_in_bytes,
        "argument_bytes": mem.argument_size_in_bytes,
        "output_bytes": mem.output_size_in_bytes,
    }


def run_once(name: str, seq_len: int, reps: int) -> dict:
    """Compile + first step, then the median step time; peak RSS of this process."""
    config = model_config(name, seq_len)
    step, shapes = layer_step(config, seq_len)
    args = [jax.random.normal(key, s) for key, s in zip(jax.random.split(jax.random.key(0), 4), shapes)]
    t0 = time.perf_counter()
    jax.block_until_ready(step(*args))
    first = time.perf_counter() - t0
    seconds = time_fn(step, *args, repeats=reps, warmup=0)
    return {
        "model": config.name,
        "T": seq_len,
        "K": config.repeat,
        "tokens": seq_len * config.repeat,
        "pairs": attention_pairs(config, seq_len),
        "first_s": first,
        "step_s": seconds,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def run_in_subprocess(name: str, seq_len: int, reps: int) -> dict:
    code = (
        "import json, sys; from benchmarks.long_context import run_once; "
        f"print('RESULT ' + json.dumps(run_once({name!r}, {seq_len}, {reps})))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{name} T={seq_len} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


COMPILE_HEADERS = ["model", "T", "K", "tokens T*K", "trace+compile s", "/ first", "XLA temp MiB"]
LONG_HEADERS = [
    "model",
    "T",
    "K",
    "tokens",
    "allowed pairs",
    "compile+first step s",
    "fwd+bwd s",
    "peak RSS MiB",
    "ns / allowed pair",
    "/ first",
]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="PHD-4", help="paper name of the variant (K from the name)")
    p.add_argument(
        "--tokens",
        type=int,
        nargs="+",
        default=[4096, 8192, 16384, 32768],
        help="T*K values for the compile-time table",
    )
    p.add_argument("--seq", type=int, nargs="*", default=[1024, 8192], help="T values, long-context table")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", default=None, help="also write the markdown tables to this file")
    a = p.parse_args(argv)
    k = model_config(a.model, 1).repeat
    device = jax.devices()[0].device_kind
    title = (
        f"# blocksparse long context: {a.model}, one layer, batch 1, {HEADS} heads / {KV_HEADS} kv "
        f"heads, head_dim {HEAD_DIM}, tiles {BLOCK}x{BLOCK}, {device}"
    )
    print(title, flush=True)
    out = [title, "", "## compile time of forward+backward vs T*K (no persistent cache)", ""]
    print(markdown_table(COMPILE_HEADERS, []), flush=True)
    rows, first = [], None
    for tokens in a.tokens:
        s = compile_stats(a.model, tokens // k)
        first = first or s["compile_s"]
        rows.append(
            [
                a.model,
                tokens // k,
                k,
                tokens,
                f"{s['compile_s']:.2f}",
                f"{s['compile_s'] / first:.2f}x",
                f"{s['temp_bytes'] / 2**20:.0f}",
            ]
        )
        print(markdown_table(COMPILE_HEADERS, rows[-1:]).splitlines()[-1], flush=True)
    out += [
        markdown_table(COMPILE_HEADERS, rows),
        "",
        f"## forward+backward at long context (median of {a.reps}, one subprocess per T)",
        "",
    ]
    print(markdown_table(LONG_HEADERS, []), flush=True)
    rows, first = [], None
    for t in a.seq:
        r = run_in_subprocess(a.model, t, a.reps)
        per_pair = r["step_s"] / r["pairs"] * 1e9
        first = first or per_pair
        rows.append(
            [
                r["model"],
                t,
                r["K"],
                r["tokens"],
                r["pairs"],
                f"{r['first_s']:.2f}",
                f"{r['step_s']:.3f}",
                f"{r['peak_rss_bytes'] / 2**20:.0f}",
                f"{per_pair:.3f}",
                f"{per_pair / first:.2f}x",
            ]
        )
        print(markdown_table(LONG_HEADERS, rows[-1:]).splitlines()[-1], flush=True)
    out.append(markdown_table(LONG_HEADERS, rows))
    if a.out:
        with open(a.out, "w") as f:
            f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    reexec_with_tuned_malloc()  # phd_jax/hostmem.py: reuse XLA:CPU's temporaries
    main()
