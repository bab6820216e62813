"""Train-step throughput of vanilla vs PHD variants, against their analytic FLOPs.

One full training step (forward + backward + clipped AdamW, jitted, parameters and
optimizer state donated) per model variant, at each sequence length T. For each:
step time, original and processed tokens/s, the analytic FLOP ratio to vanilla
(`phd_jax.flops`: layers over K*T tokens, attention over the mask's allowed pairs,
unembedding over T), the measured time ratio to vanilla, the ratio of the two (1.00 =
PHD's extra tokens cost exactly their FLOPs), model TFLOP/s and MFU against a dense
square matmul timed in the same rounds.

Variants are interleaved: each round times every variant (and the matmul), so drift on a
shared machine hits them alike; times are medians over rounds and ratios the median of
per-round ratios, all from this one run. Within a round each variant runs about as long
as the largest one (`steps / round`: the largest analytic FLOPs over its own, rounded), so a
short step such as vanilla's, the denominator of every ratio, is averaged over several
steps instead of sampled once (`--no-balance`: one step each). `ratio range` is the
spread of the per-round time ratio / FLOP ratio: how far one round can stray.

    python benchmarks/train_throughput.py                              # small config, T 512 1024
    python benchmarks/train_throughput.py --seq 128 --batch 2 --reps 3 \\
        --set num_layers=2 d_model=128 mlp_dim=384 --out t.md             # a quick check
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import jax
import jax.numpy as jnp
import optax

try:  # python -m benchmarks.train_throughput from the checkout
    from benchmarks.common import markdown_table
except ImportError:  # python benchmarks/train_throughput.py: the script's directory comes first on the path
    from common import markdown_table
from phd_jax import ModelConfig, forward, hostmem, init_params, num_params
from phd_jax.flops import train_flops_per_sequence

# The model of the performance issue's table (used when configs/small.py is absent).
ISSUE10_MODEL = dict(num_layers=6, d_model=512, num_heads=8, num_kv_heads=4, head_dim=64, mlp_dim=1536, vocab_size=4096)
DEFAULT_VARIANTS = [
    "vanilla",
    "PHD-2",
    "PHD-3",
    "PHD-4",
    "PHD-SWA-2-16-inf",
    "PHD-SWA-4-16-inf",
    "PHD-CSWA-2-16-32",
    "PHD-CSWA-4-16-32",
]


# ---- the model -------------------------------------------------------------------


def base_model(name: str, overrides: list[str]) -> tuple[ModelConfig, str]:
    """The benchmarked dimensions: `small` (configs/small.py's model if it exists, else
    the issue-10 model) or `issue10`, with `key=value` overrides of ModelConfig fields."""
    fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
    kw = dict(ISSUE10_MODEL)
    source = "issue 10's model" + (" (configs/small.py not found)" if name == "small" else "")
    path = os.path.join(ROOT, "phd_jax", "configs", "small.py")
    if name == "small" and os.path.exists(path):
        spec = importlib.util.spec_from_file_location("small_config", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        from phd_jax.train import model_config  # vocab_size 0 = the tokenizer's, padded to 128

        model = dataclasses.asdict(model_config(module.get_config()))
        kw = {
            k: v
            for k, v in model.items()
            if k in fields and k not in ("variant", "repeat", "window", "chunk", "position_mode")
        }
        source = "configs/small.py"
    for item in overrides:
        key, _, value = item.partition("=")
        if key not in fields or not value:
            raise SystemExit(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {', '.join(fields)}")
        kw[key] = _parse(getattr(ModelConfig(), key), value)
        source += f", {key}={value}"
    return ModelConfig(**kw), source


def _parse(default, text: str):
    """`text` as the type of a ModelConfig field's default."""
    if isinstance(default, bool):
        if text.lower() not in ("true", "false"):
            raise SystemExit(f"--set: expected true or false, got {text!r}")
        return text.lower() == "true"
    if isinstance(default, (int, float)):
        return type(default)(text)
    return text


# ---- the step: the one place to switch to phd_jax.train's step --------------------


def make_train_step(cfg: ModelConfig):
    """(optimizer, step) with `step(params, opt_state, batch [B, T+1]) -> (params, opt_state, loss)`."""
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(3e-4, b1=0.9, b2=0.95, weight_decay=0.1))

    def loss_fn(params, batch):
        logits = forward(params, cfg, batch[:, :-1])
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, batch[:, 1:, None], axis=-1))

    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return optimizer, jax.jit(step, donate_argnums=(0, 1))


class Runner:
    """One compiled variant with its own (donated) training state."""

    def __init__(self, cfg: ModelConfig, params, batch):
        optimizer, step = make_train_step(cfg)
        self.cfg, self.batch = cfg, batch
        self.params = jax.tree.map(jnp.copy, params)
        self.opt_state = optimizer.init(self.params)
        t0 = time.perf_counter()
        self.step = step.lower(self.params, self.opt_state, batch).compile()
        self.compile_s = time.perf_counter() - t0
        self.times = []

    def run(self, steps: int = 1) -> float:
        """Seconds per step over `steps` consecutive steps."""
        t0 = time.perf_counter()
        for _ in range(steps):
            self.params, self.opt_state, loss = self.step(self.params, self.opt_state, self.batch)
        jax.block_until_ready((self.params, self.opt_state, loss))
        dt = (time.perf_counter() - t0) / steps
        self.times.append(dt)
        return dt


class Matmul:
    """The dense reference: one square matmul, timed in every round like a variant."""

    def __init__(self, n: int):
        a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
        self.a, self.flops, self.times = a, 2.0 * n**3, []
        self.fn = jax.jit(jnp.matmul).lower(a, a).compile()

    def run(self) -> float:
        t0 = time.perf_counter()
        jax.block_until_ready(self.fn(self.a, self.a))
        dt = time.perf_counter() - t0
        self.times.append(dt)
        return dt


# ---- the benchmark ----------------------------------------------------------------

HEADERS = [
    "model",
    "T",
    "ms / step",
    "tokens/s",
    "processed tokens/s",
    "FLOPs / vanilla",
    "time / vanilla",
    "time ratio / FLOP ratio",
    "ratio range",
    "steps / round",
    "TFLOP/s",
    "MFU",
    "compile s",
]


def steps_per_round(flops: dict[str, float], balance: bool) -> dict[str, int]:
    """Steps each variant runs per round: about as long as the largest (by analytic FLOPs)."""
    top = max(flops.values())
    return {name: max(1, round(top / f)) if balance else 1 for name, f in flops.items()}


def bench_length(
    base: ModelConfig,
    names: list[str],
    seq_len: int,
    batch: int,
    reps: int,
    matmul: Matmul,
    log,
    balance: bool = True,
    warmup: int = 2,
) -> tuple[list[list], float]:
    runners = {}
    params = init_params(base.replace(max_seq_len=max(base.max_seq_len, seq_len)), 0)
    data = jax.random.randint(jax.random.key(1), (batch, seq_len + 1), 0, base.vocab_size, jnp.int32)
    dims = {
        f.name: getattr(base, f.name)
        for f in dataclasses.fields(ModelConfig)
        if f.name not in ("variant", "repeat", "window", "chunk", "position_mode")
    }
    dims["max_seq_len"] = max(base.max_seq_len, seq_len)
    for name in names:
        cfg = ModelConfig.from_name(name, **dims)
        runners[name] = Runner(cfg, params, data)
        log(f"  compiled {cfg.name} at T={seq_len} in {runners[name].compile_s:.1f}s")
    del params
    flops = {name: train_flops_per_sequence(r.cfg, seq_len) for name, r in runners.items()}
    steps = steps_per_round(flops, balance)
    # Warm-up round, not timed, largest step first: all variants share one heap (the tuned malloc
    # keeps what is freed), and warming up in growing sizes leaves each larger step to extend the
    # heap past the freed smaller ones, which slowed the variants that came last by up to 10%.
    # Further warm-up rounds run like the timed ones: the heap can still grow in the first of
    # those (page faults, 2 MiB pages compacted on the spot), which doubled single steps.
    for name in sorted(runners, key=lambda name: -flops[name]):
        runners[name].run()
    ratios = {name: [] for name in names}
    for i in range(-(warmup - 1), reps):
        matmul.run()
        round_times = {name: r.run(steps[name]) for name, r in runners.items()}
        log(
            f"  {f'round {i + 1}/{reps}' if i >= 0 else 'warm-up'}: "
            + ", ".join(f"{n} {t * 1e3:.0f}ms" for n, t in round_times.items())
        )
        if i < 0:
            continue
        ref = round_times[names[0]]
        for name, t in round_times.items():
            ratios[name].append(t / ref)
    for r in [*runners.values(), matmul]:
        del r.times[: len(r.times) - reps]  # keep the timed rounds only
    peak = matmul.flops / statistics.median(matmul.times)
    rows = []
    for name, r in runners.items():
        t = statistics.median(r.times)
        flop_ratio, time_ratio = flops[name] / flops[names[0]], statistics.median(ratios[name])
        spread = [x / flop_ratio for x in ratios[name]]
        rows.append(
            [
                r.cfg.name,
                seq_len,
                f"{t * 1e3:.0f}",
                f"{batch * seq_len / t:,.0f}",
                f"{batch * seq_len * r.cfg.repeat / t:,.0f}",
                f"{flop_ratio:.2f}",
                f"{time_ratio:.2f}",
                f"{time_ratio / flop_ratio:.2f}",
                f"{min(spread):.2f}-{max(spread):.2f}",
                steps[name],
                f"{batch * flops[name] / t / 1e12:.3f}",
                f"{batch * flops[name] / t / peak:.1%}",
                f"{r.compile_s:.1f}",
            ]
        )
    return rows, peak


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model",
        choices=["small", "issue10"],
        default="small",
        help="small: configs/small.py's model if present, else issue 10's; issue10: "
        "6 layers, d_model 512, 8/4 heads, head_dim 64, SwiGLU 1536, vocab 4096",
    )
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="FIELD=VALUE",
        help="override ModelConfig fields, e.g. --set num_layers=2 attention=dense",
    )
    p.add_argument(
        "--variants", nargs="+", default=DEFAULT_VARIANTS, help="paper names; the first is the reference of the ratios"
    )
    p.add_argument("--seq", type=int, nargs="+", default=[512, 1024])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--reps", type=int, default=5, help="timed rounds (median over them)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first (the first runs the largest step first)")
    p.add_argument(
        "--balance",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run each variant about as long per round as the largest (several steps of "
        "a short one); --no-balance: one step of each",
    )
    p.add_argument(
        "--matmul",
        type=int,
        default=None,
        help="side of the reference matmul (default 2048 on CPU, 8192 on accelerators)",
    )
    p.add_argument("--out", default=None, help="also write the markdown report to this file")
    a = p.parse_args(argv)
    if a.reps < 1 or a.batch < 1 or a.warmup < 1:
        raise SystemExit("--reps, --batch and --warmup must be >= 1")

    base, source = base_model(a.model, a.set)
    dev = jax.devices()[0]
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    n = a.matmul or (2048 if dev.platform == "cpu" else 8192)
    matmul = Matmul(n)
    nparams = num_params(jax.eval_shape(lambda: init_params(base, 0)))
    title = (
        f"# Train-step throughput: {base.num_layers} layers, d_model {base.d_model}, "
        f"{base.num_heads}/{base.num_kv_heads} heads, head_dim {base.head_dim}, mlp {base.mlp_dim}, "
        f"vocab {base.vocab_size} ({nparams / 1e6:.1f}M parameters, {source})"
    )
    meta = (
        f"batch {a.batch}, {base.dtype}, attention `{base.attention}`, forward + backward + AdamW "
        f"(jitted, donated); median of {a.reps} interleaved rounds after {a.warmup} warm-up rounds"
        f"{', each variant as long as the largest per round' if a.balance else ', one step each'}; "
        f"device: {dev.device_kind} ({dev.platform}, {os.cpu_count()} host cores, "
        f"{hostmem.describe()}), jax {jax.__version__}, {platform.python_version()}; "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC.\n\n"
        f"FLOPs / vanilla: analytic training FLOPs (`phd_jax.flops`, 3 x forward). "
        f"time ratio / FLOP ratio: 1.00 means the extra tokens cost exactly their FLOPs. "
        f"MFU: model FLOP/s over a {n}x{n} float32 matmul timed in the same rounds."
    )
    cmd = (
        ("PHD_JAX_TUNE_MALLOC=0 " if os.environ.get(hostmem.OPT_OUT) == "0" else "")
        + "python benchmarks/train_throughput.py "
        + " ".join(sys.argv[1:] if argv is None else argv)
    )
    print(title + "\n\n" + meta + "\n", flush=True)
    rows, peaks = [], []
    for t in a.seq:
        log(f"T={t}")
        r, peak = bench_length(base, a.variants, t, a.batch, a.reps, matmul, log, a.balance, a.warmup)
        rows += r
        peaks.append(peak)
        print(markdown_table(HEADERS, r) + "\n", flush=True)
        matmul.times.clear()
        hostmem.release_free_memory()  # the next length's programs start from a trimmed heap
        report = (
            f"{title}\n\n{meta}\n\n"
            + markdown_table(HEADERS, rows)
            + "\n\n"
            + "Dense matmul reference: "
            + ", ".join(f"T={t}: {pk / 1e9:.0f} GFLOP/s" for t, pk in zip(a.seq, peaks))
            + f".\n\nCommand: `{cmd.strip()}`\n"
        )
        if a.out:  # after every T: a long run that is stopped keeps what it measured
            os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
            with open(a.out, "w") as f:
                f.write(report)
            log(f"wrote {a.out}")
    return rows


if __name__ == "__main__":
    hostmem.reexec_with_tuned_malloc()  # phd_jax/hostmem.py: reuse XLA:CPU's temporaries
    main()
