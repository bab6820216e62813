"""Up-training recipe, end to end on the tiny config: a vanilla model trained S steps, exported
as a Hugging Face Llama checkpoint, continued as PHD-2 for N steps (`init_from=hf:PATH`), next
to PHD-2 and vanilla from scratch. Prints the step-0 gap, how it closes, and a comparison table.

    python examples/uptrain.py [--vanilla_steps=200] [--phd_steps=100] [--root=runs/uptrain]
"""

import argparse
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import phd_jax  # noqa: E402
from phd_jax.configs.tiny import get_config  # noqa: E402
from phd_jax.data import make_pipeline  # noqa: E402
from phd_jax.evaluation import evaluate_loss  # noqa: E402
from phd_jax.train import restore_params, train_and_evaluate  # noqa: E402


def run_config(steps, eval_every=None, **model_and_more):
    c = get_config()
    c.eval_batches, c.num_steps, c.compilation_cache = 8, steps, ""
    c.checkpoint_every = steps
    c.log_every = c.eval_every = eval_every or steps
    for k, v in model_and_more.items():
        section, _, key = k.rpartition("__")
        (c.model if section == "model" else c)[key] = v
    return c


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vanilla_steps", type=int, default=200)
    ap.add_argument("--phd_steps", type=int, default=100)
    ap.add_argument("--root", default="runs/uptrain")
    a = ap.parse_args()
    s, n, root = a.vanilla_steps, a.phd_steps, a.root
    shutil.rmtree(root, ignore_errors=True)
    vanilla = dict(model__variant="vanilla", model__repeat=1)
    train_and_evaluate(run_config(s, **vanilla), f"{root}/vanilla", progress=False)
    vcfg, vparams, _ = restore_params(f"{root}/vanilla")
    hf = phd_jax.save_hf_llama(vparams, vcfg, f"{root}/hf")
    print(f"exported {vcfg.name} (step {s}) to {hf}: {sorted(os.listdir(hf))}")
    batches = make_pipeline(run_config(1)).eval_batches()
    loss = {"vanilla, S steps": evaluate_loss(vparams, vcfg, batches)["loss"]}
    pcfg, pparams = phd_jax.load_hf_llama(hf, variant="phd", repeat=2)
    loss["PHD-2 on those weights, step 0"] = evaluate_loss(pparams, pcfg, batches)["loss"]
    gap = loss["PHD-2 on those weights, step 0"] - loss["vanilla, S steps"]
    print(f"step-0 gap (PHD-2 minus vanilla, same weights): {gap:+.5f} nats/token")
    up = run_config(n, eval_every=max(1, n // 5), init_from=f"hf:{hf}")
    train_and_evaluate(up, f"{root}/up", progress=False)
    curve = [(m["step"], m["val_loss"]) for m in map(json.loads, open(f"{root}/up/metrics.jsonl")) if "val_loss" in m]
    print("up-training val_loss by step: " + ", ".join(f"{st}: {v:.3f}" for st, v in curve))
    cfg, params, _ = restore_params(f"{root}/up")
    loss["up-trained: S vanilla + N PHD-2 steps"] = evaluate_loss(params, cfg, batches)["loss"]
    for name, folder, steps, extra in (
        ("PHD-2 from scratch, N steps", "phd_n", n, {}),
        ("PHD-2 from scratch, S + N steps", "phd_sn", s + n, {}),
        ("vanilla from scratch, S + N steps", "vanilla_sn", s + n, vanilla),
    ):
        train_and_evaluate(run_config(steps, **extra), f"{root}/{folder}", progress=False)
        cfg, params, _ = restore_params(f"{root}/{folder}")
        loss[name] = evaluate_loss(params, cfg, batches)["loss"]
    targets = sum(b["tokens"][:, 1:].size for b in batches)
    print(f"\nS = {s}, N = {n}; held-out loss (nats/token, {targets:,} tokens):")
    for name, v in loss.items():
        print(f"  {name:<40} {v:.4f}")


if __name__ == "__main__":
    main()
