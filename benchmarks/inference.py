"""Inference cost of PHD vs vanilla and naive repetition (the paper's Figures 1c/d and 9), on CPU.

- prefill time vs prompt length (K = 4) and vs K (T = 1024);
- per-token decode latency vs K at batch 1 (a jitted `lax.scan` of decode steps);
- persistent KV cache bytes vs K.
Every time is the median of several runs after a warm-up; every ratio is to
vanilla measured in the same run. Writes `README.md` (tables) and PNG plots
to --out.

    python benchmarks/inference.py                      # ~50M-parameter model, full sweep
    python benchmarks/inference.py --quick              # smaller sweep for a smoke run
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp

import phd_jax

try:  # python -m benchmarks.X from the checkout
    from benchmarks.common import markdown_table, time_fn
except ImportError:  # python benchmarks/X.py: the script's directory comes first on the path
    from common import markdown_table, time_fn
from phd_jax.decode import prefill_unchecked
from phd_jax.hostmem import reexec_with_tuned_malloc
from phd_jax.sampling import decode_loop

MODEL = dict(
    vocab_size=8192,
    num_layers=16,
    d_model=512,
    num_heads=8,
    num_kv_heads=4,
    head_dim=64,
    mlp_dim=1536,
    max_seq_len=8192,
)


def config(variant: str, k: int, **kw) -> phd_jax.ModelConfig:
    extra = {
        "phd_swa": dict(window=16),
        "phd_cswa": dict(window=16, chunk=32),
        "naive": dict(position_mode="flat"),
    }.get(variant, {})
    if k == 1 and variant != "naive":
        variant, extra = "vanilla", {}
    return phd_jax.ModelConfig(variant=variant, repeat=k, **extra, **MODEL, **kw)


def prefill_time(cfg, params, t, reps):
    tokens = jax.random.randint(jax.random.key(0), (1, t), 0, cfg.vocab_size)
    lengths = jnp.full((1,), t, jnp.int32)
    return time_fn(lambda: prefill_unchecked(params, cfg, tokens, lengths, t, False), repeats=reps)


def greedy_decode_fn(cfg, params, prompt_len, steps):
    """A function that decodes `steps` tokens greedily (batch 1) after a `prompt_len`-token prefill
    (done here, once): what decode_latency and experiments/kprime.py time."""
    tokens = jax.random.randint(jax.random.key(0), (1, prompt_len), 0, cfg.vocab_size)
    logits, state = phd_jax.prefill(params, cfg, tokens, max_len=prompt_len + steps + 1)

    def run():
        return decode_loop(
            params,
            cfg,
            logits,
            state,
            jax.random.key(0),
            0.0,
            1.0,
            max_new_tokens=steps + 1,
            greedy=True,
            top_k=0,
            use_top_p=False,
            eos_id=None,
            pad_id=0,
        )

    return run


def decode_latency(cfg, params, prompt_len, steps, reps):
    return time_fn(greedy_decode_fn(cfg, params, prompt_len, steps), repeats=reps) / steps


def plot(path, title, xlabel, ylabel, series, logx=True, logy=True):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", label=name)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if logx:
        ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results/inference")
    p.add_argument("--quick", action="store_true", help="small sweep (smoke test)")
    p.add_argument("--reps", type=int, default=3)
    a = p.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    if a.quick:
        lengths, ks, dec_ks, naive_max, t_k, dec_prompt, steps = [256, 512], [1, 2, 4], [1, 4], 2048, 256, 128, 16
        MODEL.update(num_layers=4)
    else:
        lengths, ks, dec_ks, naive_max, t_k, dec_prompt, steps = (
            [256, 512, 1024, 2048, 4096],
            [1, 2, 4, 8, 16],
            [1, 2, 4, 8, 16, 32, 64],
            8192,
            1024,
            1024,
            32,
        )
    params = phd_jax.init_params(config("vanilla", 1), 0)
    n_params = phd_jax.num_params(params)
    variants = ["naive", "phd", "phd_swa", "phd_cswa"]
    report = [
        f"# Inference benchmark\n\nModel: {n_params / 1e6:.1f}M parameters "
        f"({MODEL['num_layers']} layers, d_model {MODEL['d_model']}, {MODEL['num_heads']} query / "
        f"{MODEL['num_kv_heads']} KV heads, head_dim {MODEL['head_dim']}), float32, batch 1, "
        f"`{jax.devices()[0].device_kind}` ({os.cpu_count()} cores). PHD-SWA: W = 16; "
        f"PHD-CSWA: W = 16, C = 32. Median of {a.reps} runs (decode: {max(a.reps, 5)}) after a "
        f"warm-up; vanilla re-timed next to every row.\n\n"
        f"Command: `python benchmarks/inference.py{' --quick' if a.quick else ''}`\n"
    ]
    started = time.time()

    # 1. Prefill vs prompt length at K = 4.
    rows, series = [], {}
    for t in lengths:
        base = prefill_time(config("vanilla", 1), params, t, a.reps)
        row = [t, f"{base * 1e3:.0f}"]
        series.setdefault("vanilla", ([], []))
        series["vanilla"][0].append(t), series["vanilla"][1].append(base * 1e3)
        for v in variants:
            if v == "naive" and 4 * t > naive_max:
                row.append("-")
                continue
            cfg = config(v, 4)
            dt = prefill_time(cfg, params, t, a.reps)
            row.append(f"{dt * 1e3:.0f} ({dt / base:.2f}x)")
            series.setdefault(cfg.name, ([], []))
            series[cfg.name][0].append(t), series[cfg.name][1].append(dt * 1e3)
        rows.append(row)
        print(rows[-1], flush=True)
    headers = ["prompt T", "vanilla ms"] + [config(v, 4).name + " ms (x vanilla)" for v in variants]
    report += [
        "## Prefill time vs prompt length (K = 4)\n",
        markdown_table(headers, rows),
        "",
        "![prefill vs length](prefill_vs_length.png)\n",
    ]
    plot(
        os.path.join(a.out, "prefill_vs_length.png"),
        "Prefill time vs prompt length (K=4)",
        "prompt length T",
        "ms",
        series,
    )

    # 2. Prefill vs K at T = t_k (vanilla re-timed next to each row: the machine drifts).
    rows, series = [], {}
    for k in ks:
        base = prefill_time(config("vanilla", 1), params, t_k, a.reps)
        row = [k, f"{base * 1e3:.0f}"]
        for v in variants:
            if v == "naive" and k * t_k > naive_max:
                row.append("-")
                continue
            dt = base if (k == 1 and v != "naive") else prefill_time(config(v, k), params, t_k, a.reps)
            row.append(f"{dt * 1e3:.0f} ({dt / base:.2f}x)")
            series.setdefault(v, ([], []))
            series[v][0].append(k), series[v][1].append(dt / base)
        rows.append(row)
        print(rows[-1], flush=True)
    report += [
        f"## Prefill time vs K (T = {t_k})\n",
        markdown_table(["K", "vanilla ms"] + [f"{v} ms (x vanilla)" for v in variants], rows),
        "",
        "![prefill vs K](prefill_vs_k.png)\n",
    ]
    plot(
        os.path.join(a.out, "prefill_vs_k.png"), f"Prefill time / vanilla vs K (T={t_k})", "K", "time / vanilla", series
    )

    # 3. Decode latency vs K, batch 1 (vanilla re-timed next to each row).
    rows, series = [], {}
    for k in dec_ks:
        base = decode_latency(config("vanilla", 1), params, dec_prompt, steps, max(a.reps, 5))
        row = [k, f"{base * 1e3:.1f}"]
        for v in variants:
            if v == "naive" and k > 16:  # its cache grows K-fold
                row.append("-")
                continue
            dt = (
                base
                if (k == 1 and v != "naive")
                else decode_latency(config(v, k), params, dec_prompt, steps, max(a.reps, 5))
            )
            row.append(f"{dt * 1e3:.1f} ({dt / base:.2f}x)")
            series.setdefault(v, ([], []))
            series[v][0].append(k), series[v][1].append(dt * 1e3)
        rows.append(row)
        print(rows[-1], flush=True)
    report += [
        f"## Decode latency per token vs K (batch 1, context {dec_prompt})\n",
        markdown_table(["K", "vanilla ms"] + [f"{v} ms (x vanilla)" for v in variants], rows),
        "",
        "![decode vs K](decode_vs_k.png)\n",
    ]
    plot(os.path.join(a.out, "decode_vs_k.png"), "Decode latency per token vs K (batch 1)", "K", "ms / token", series)

    # 4. KV cache bytes vs K (formula, checked against a real state).
    rows, series, max_len = [], {}, 4096
    for k in [1, 2, 4, 8, 16]:
        row = [k]
        for v in ["vanilla"] + variants:
            if v == "vanilla" and k > 1:
                row.append("")
                continue
            cfg = config(v, k)
            nbytes = phd_jax.kv_cache_bytes(cfg, 1, max_len)
            assert nbytes == phd_jax.init_state(cfg, 1, max_len).cache_bytes
            row.append(f"{nbytes / 2**20:.1f}")
            if v != "vanilla":
                series.setdefault(v, ([], []))
                series[v][0].append(k), series[v][1].append(nbytes / 2**20)
        rows.append(row)
    report += [
        f"## Persistent KV cache (MiB per sequence, max_len {max_len}, float32)\n",
        markdown_table(["K", "vanilla"] + variants, rows),
        "",
        "![cache vs K](cache_vs_k.png)\n",
    ]
    plot(
        os.path.join(a.out, "cache_vs_k.png"),
        f"KV cache per sequence (max_len {max_len})",
        "K",
        "MiB",
        series,
        logy=False,
    )
    report.append(f"Total benchmark time: {(time.time() - started) / 60:.1f} min.\n")
    with open(os.path.join(a.out, "README.md"), "w") as f:
        f.write("\n".join(report))
    print("\n".join(report))


if __name__ == "__main__":
    reexec_with_tuned_malloc()  # phd_jax/hostmem.py: reuse XLA:CPU's temporaries
    main()
