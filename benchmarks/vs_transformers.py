"""Generation speed against the user's alternative: Hugging Face `transformers` (torch, CPU).

The same random Llama weights (8 layers, d_model 512, 8/4 heads, head_dim 64, SwiGLU 1536,
vocab 4096, float32) are built with `transformers`, saved as safetensors and loaded with
`phd_jax.load_hf_llama`, as a user would. Greedy generation of 64 tokens after a
256-token prompt, batch 1 and 8: prefill time and end-to-end tokens/s (prefill + 64
decode steps), each the median of several runs with ours and theirs interleaved, and
the fraction of generated tokens on which the two agree. `--variants vanilla,PHD-2` adds
PHD models on the same weights (transformers has no PHD: its column is vanilla's).

    python benchmarks/vs_transformers.py                  # writes benchmarks/results/vs_transformers.md
    python benchmarks/vs_transformers.py --repeats 3 --batches 1
    python benchmarks/vs_transformers.py --threads 1        # one thread each (a busy machine)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time


def _threads_from_argv() -> int:
    """--threads must act before jax and torch are imported (XLA reads its flags once)."""
    for i, a in enumerate(sys.argv):
        if a.startswith("--threads="):
            return int(a.split("=", 1)[1])
        if a == "--threads" and i + 1 < len(sys.argv):
            return int(sys.argv[i + 1])
    return 0


if _threads_from_argv() == 1:  # one thread each: fair on a machine shared with other jobs
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    ).strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402

import phd_jax  # noqa: E402
from phd_jax.hostmem import reexec_with_tuned_malloc

try:  # python -m benchmarks.vs_transformers from the checkout
    from benchmarks.common import markdown_table  # noqa: E402
except ImportError:  # python benchmarks/vs_transformers.py: the script's directory comes first on the path
    from common import markdown_table  # noqa: E402

LLAMA = dict(
    vocab_size=4096,
    hidden_size=512,
    intermediate_size=1536,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=64,
    max_position_embeddings=1024,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
)


def build_llama(path: str, seed: int = 0):
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA)).eval()
    model.save_pretrained(path)
    return model


def time_once(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="0: each library's default; 1: one thread each (torch and XLA), fairer on a busy machine",
    )
    ap.add_argument("--variants", default="vanilla", help="comma list: vanilla, PHD-2, PHD-CSWA-2-16-32, ...")
    # The default, relative to where the command runs (so --help and the report show no machine path).
    here = os.path.dirname(os.path.abspath(__file__))
    default_out = os.path.relpath(os.path.join(here, "results", "vs_transformers.md"))
    ap.add_argument("--out", default=default_out)
    args = ap.parse_args()

    import torch
    import transformers

    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = tempfile.mkdtemp(prefix="vs-transformers-")
    hf = build_llama(tmp)
    hf.generation_config.eos_token_id = None  # always 64 new tokens, on both sides
    hf.generation_config.pad_token_id = 0
    max_len = args.prompt + args.new
    rows, raw = [], []
    for name in args.variants.split(","):
        overrides = (
            {}
            if name == "vanilla"
            else {
                k: v
                for k, v in vars(phd_jax.ModelConfig.from_name(name)).items()
                if k in ("variant", "repeat", "window", "chunk")
            }
        )
        cfg, params = phd_jax.load_hf_llama(tmp, **overrides)
        for b in map(int, args.batches.split(",")):
            prompt = np.random.default_rng(b).integers(0, LLAMA["vocab_size"], (b, args.prompt)).astype(np.int32)
            prompt_t = torch.from_numpy(prompt.astype(np.int64))
            ours_prefill = lambda: jax.block_until_ready(phd_jax.prefill(params, cfg, prompt, max_len))  # noqa: E731
            ours_gen = lambda: np.asarray(phd_jax.generate(params, cfg, prompt, args.new, max_len=max_len))  # noqa: E731
            hf_prefill = lambda: hf(prompt_t, use_cache=True)  # noqa: E731
            hf_gen = (
                lambda: hf.generate(
                    prompt_t,
                    max_new_tokens=args.new,
                    min_new_tokens=args.new,  # noqa: E731
                    do_sample=False,
                )[:, args.prompt :].numpy()
            )
            ours_tokens, hf_tokens = ours_gen(), hf_gen()  # warm-up (compiles ours)
            ours_prefill()
            hf_prefill()
            t = {"ours_prefill": [], "hf_prefill": [], "ours_gen": [], "hf_gen": []}
            for _ in range(args.repeats):  # interleaved
                t["ours_prefill"].append(time_once(ours_prefill))
                t["hf_prefill"].append(time_once(hf_prefill))
                t["ours_gen"].append(time_once(ours_gen))
                t["hf_gen"].append(time_once(hf_gen))
            med = {k: statistics.median(v) for k, v in t.items()}
            agree = float((ours_tokens == hf_tokens).mean()) if name == "vanilla" else float("nan")
            ours_tps, hf_tps = b * args.new / med["ours_gen"], b * args.new / med["hf_gen"]
            rows.append(
                [
                    cfg.name,
                    b,
                    med["ours_prefill"] * 1e3,
                    med["hf_prefill"] * 1e3,
                    med["hf_prefill"] / med["ours_prefill"],
                    ours_tps,
                    hf_tps,
                    ours_tps / hf_tps,
                    f"{agree:.0%}" if agree == agree else "n/a",
                ]
            )
            raw.append(
                {
                    "model": cfg.name,
                    "batch": b,
                    **med,
                    "ours_tokens_per_s": ours_tps,
                    "hf_tokens_per_s": hf_tps,
                    "agree": agree,
                }
            )
            print(markdown_table(HEADERS, rows[-1:]).splitlines()[-1], flush=True)
    table = markdown_table(HEADERS, rows)
    header = (
        f"Greedy generation, {args.new} new tokens after a {args.prompt}-token prompt; random Llama "
        f"weights ({LLAMA['num_hidden_layers']} layers, d_model {LLAMA['hidden_size']}, "
        f"{LLAMA['num_attention_heads']}/{LLAMA['num_key_value_heads']} heads, SwiGLU "
        f"{LLAMA['intermediate_size']}, vocab {LLAMA['vocab_size']}, float32); median of "
        f"{args.repeats} interleaved runs; jax {jax.__version__} ({jax.devices()[0].platform}), "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), transformers "
        f"{transformers.__version__}; {os.cpu_count()} CPU cores, load average "
        f"{os.getloadavg()[0]:.1f} at the end (absolute times drift; the ratios are from the same runs)."
    )
    print("\n" + header + "\n\n" + table)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            f.write(header + "\n\n" + table + "\n")
        with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
            json.dump(raw, f, indent=2)


HEADERS = [
    "model",
    "batch",
    "prefill ms (ours)",
    "prefill ms (transformers)",
    "prefill speed-up",
    "tokens/s (ours)",
    "tokens/s (transformers)",
    "tokens/s ratio",
    "tokens agree",
]

if __name__ == "__main__":
    reexec_with_tuned_malloc()  # phd_jax/hostmem.py: reuse XLA:CPU's temporaries
    main()
