"""Up-training Hugging Face checkpoints into PHD-2, for each architecture phd_jax reads: OLMo2,
Qwen2, Qwen3, Llama and Llama 3 (rope scaling). For each: a small random model built offline by
transformers (any local checkpoint of these architectures works the same way) is converted and
checked against transformers' logits, up-trained as PHD-2 for a few steps with
`train.py --config.init_from=hf:PATH`, evaluated with `eval.py`, and saved back with `save_hf`
(as `phd_<model_type>`, which transformers refuses by name).

    python examples/uptrain_hf.py [--steps=20] [--root=runs/uptrain_hf] [--archs=olmo2,qwen3]

Needs the `hf` extra (transformers and torch) for the random models and the logits check.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

import phd_jax  # noqa: E402

DIMS = dict(
    vocab_size=320,  # >= the byte tokenizer's 259 ids: the example trains on Shakespeare's bytes
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    pad_token_id=None,
    bos_token_id=None,
    eos_token_id=None,
)
ARCHS = {  # name -> (transformers config class, model class, config extras)
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(tie_word_embeddings=True)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=32)),
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "llama3": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(
            rope_parameters=dict(
                rope_type="llama3",
                rope_theta=500000.0,
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=64,
            )
        ),
    ),
}


def random_checkpoint(name: str, path: str):
    import torch
    import transformers

    cfg_cls, model_cls, extra = ARCHS[name]
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(**{**DIMS, **extra})).eval()
    model.save_pretrained(path)
    return model


def run(program, *args):
    """Run a command line of this repository (train.py, eval.py), echoing it and its output."""
    args = (os.path.relpath(os.path.join(ROOT, program)), *args)
    print(f"$ python {' '.join(args)}", flush=True)
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True)
    print((out.stdout + out.stderr).rstrip(), flush=True)
    if out.returncode:
        sys.exit(f"{program} failed with exit status {out.returncode}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--root", default="runs/uptrain_hf")
    ap.add_argument("--archs", default=",".join(ARCHS))
    a = ap.parse_args()
    root = a.root
    shutil.rmtree(root, ignore_errors=True)
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    tokens = np.random.default_rng(0).integers(0, DIMS["vocab_size"], (2, 32))
    for name in a.archs.split(","):
        print(f"\n=== {name} ===", flush=True)
        hf_dir, workdir, out_dir = (f"{root}/{name}/{d}" for d in ("hf", "run", "phd2-hf"))
        model = random_checkpoint(name, hf_dir)
        cfg, params = phd_jax.load_hf(hf_dir)
        with torch.no_grad():
            ref = model(torch.from_numpy(tokens)).logits.numpy()
        diff = float(np.abs(np.asarray(phd_jax.forward(params, cfg, tokens)) - ref).max())
        print(f"load_hf: {type(model).__name__} -> {cfg.name}; max |logits - transformers| = {diff:.1e}")
        run(
            "train.py",
            "--config=configs/tiny.py:PHD-2",
            f"--config.init_from=hf:{hf_dir}",
            f"--config.num_steps={a.steps}",
            f"--config.log_every={a.steps // 2}",
            f"--config.eval_every={a.steps}",
            f"--config.checkpoint_every={a.steps}",
            "--config.sample_tokens=0",
            f"--workdir={workdir}",
            "--progress=false",
        )
        run("eval.py", f"--workdir={workdir}", "--loss")
        from phd_jax.train import restore_params

        up_cfg, up_params, step = restore_params(workdir)
        phd_jax.save_hf(up_params, up_cfg, out_dir, tokenizer_dir=hf_dir)
        back, _ = phd_jax.load_hf(out_dir)
        written = json.load(open(f"{out_dir}/config.json"))
        print(
            f"save_hf: {up_cfg.name} (step {step}) -> {written['architectures'][0]} ({written['model_type']}); "
            f"load_hf gives it back: {back == up_cfg}"
        )
        try:
            transformers.AutoModelForCausalLM.from_pretrained(out_dir)
            print("transformers loaded it (unexpected)")
        except (ValueError, KeyError) as e:
            print(f"transformers refuses it: {str(e).splitlines()[0][:110]}...")


if __name__ == "__main__":
    main()
