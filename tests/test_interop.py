"""Hugging Face Llama interop: logits equal transformers', save/load round trips, clear errors."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

import phd_jax
from phd_jax.errors import ConfigError
from tests.helpers import max_diff, tiny_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

HF_DIMS = dict(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=80,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    rms_norm_eps=1e-5,
    rope_parameters={"rope_type": "default", "rope_theta": 5000.0},
)


def _random_llama(path, tie: bool, dtype=torch.float32, seed=0, **save_kw):
    """A random tiny LlamaForCausalLM built offline, every weight (norms too) non-trivial."""
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(**HF_DIMS, tie_word_embeddings=tie)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.2 if "norm" not in name else 0.1) + ("norm" in name))
    model = model.to(dtype)
    model.save_pretrained(path, **save_kw)
    return model


@pytest.fixture(scope="session")
def hf_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for tie in (True, False):
        out[tie] = (str(root / f"tie{tie}"), _random_llama(str(root / f"tie{tie}"), tie, seed=int(tie)))
    return out


@pytest.fixture(scope="session")
def tokens():
    return np.random.default_rng(0).integers(0, HF_DIMS["vocab_size"], (2, 24)).astype(np.int32)


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_vanilla_logits_equal_transformers(hf_models, tokens, tie):
    path, model = hf_models[tie]
    cfg, params = phd_jax.load_hf_llama(path, attention="dense")
    assert (cfg.tie_embeddings, cfg.num_kv_heads, cfg.num_heads, cfg.rope_theta) == (tie, 2, 4, 5000.0)
    assert ("unembed" in params) == (not tie)
    ours = np.asarray(jax.jit(phd_jax.forward, static_argnums=1)(params, cfg, tokens))
    with torch.no_grad():
        ref = model(torch.from_numpy(tokens.astype(np.int64))).logits.numpy()
    assert np.abs(ours - ref).max() < 1e-4, np.abs(ours - ref).max()


def test_save_load_roundtrip_keeps_params_and_phd_fields(hf_models, tmp_path):
    cfg, params = phd_jax.load_hf_llama(
        hf_models[False][0], variant="phd_cswa", repeat=3, window=4, chunk=8, scan_layers=False, block_q=16, block_kv=16
    )
    assert cfg.name == "PHD-CSWA-3-4-8" and "layers_1" in params
    out = phd_jax.save_hf_llama(params, cfg, str(tmp_path / "out"))
    cfg2, params2 = phd_jax.load_hf_llama(out, scan_layers=False)
    assert cfg2 == cfg
    assert jax.tree.structure(params2) == jax.tree.structure(params) and max_diff(params, params2) == 0
    written = json.load(open(os.path.join(out, "config.json")))
    assert written["phd_jax"]["variant"] == "phd_cswa" and written["model_type"] == "phd_llama"
    assert written["architectures"] == ["PhdLlamaForCausalLM"]  # transformers refuses it by name
    # scanned and unscanned layouts hold the same weights
    cfg3, params3 = phd_jax.load_hf_llama(out, scan_layers=True)
    assert (
        cfg3.scan_layers
        and max_diff(params3["layers"]["mlp"]["up"]["kernel"][1], params["layers_1"]["mlp"]["up"]["kernel"]) == 0
    )
    with pytest.raises(FileExistsError, match="already holds a checkpoint"):
        phd_jax.save_hf_llama(params, cfg, out)


def test_our_model_saved_runs_in_transformers(tmp_path, tokens):
    """Export of a phd_jax-initialised vanilla model: transformers reads it and agrees."""
    cfg = tiny_config("vanilla", 1, vocab_size=96, tie_embeddings=False, rope_theta=777.0)
    params = phd_jax.init_params(cfg, 3)
    path = phd_jax.save_hf_llama(params, cfg, str(tmp_path / "ours"), max_shard_size="40KB")
    assert os.path.isfile(os.path.join(path, "model.safetensors.index.json"))
    model = transformers.LlamaForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        ref = model(torch.from_numpy(tokens.astype(np.int64))).logits.numpy()
    ours = np.asarray(phd_jax.forward(params, cfg, tokens))
    assert np.abs(ours - ref).max() < 1e-4


def test_sharded_and_bfloat16_checkpoints_load(tmp_path, tokens):
    path = str(tmp_path / "sharded")
    model = _random_llama(path, tie=False, dtype=torch.bfloat16, max_shard_size="20KB")
    index = json.load(open(os.path.join(path, "model.safetensors.index.json")))
    assert len(set(index["weight_map"].values())) > 2
    cfg, params = phd_jax.load_hf_llama(path)
    assert cfg.param_dtype == "bfloat16" and params["embed"]["embedding"].dtype == "bfloat16"
    ref_embed = model.model.embed_tokens.weight.detach().float().numpy()
    assert np.array_equal(np.asarray(params["embed"]["embedding"], np.float32), ref_embed)
    cfg32, params32 = phd_jax.load_hf_llama(path, dtype="float32", param_dtype="float32")
    ref_model = transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():  # (model.float() would keep RoPE's inv_freq rounded to bfloat16)
        ref = ref_model(torch.from_numpy(tokens.astype(np.int64))).logits.numpy()
    assert np.abs(np.asarray(phd_jax.forward(params32, cfg32, tokens)) - ref).max() < 1e-4


def test_phd_overrides_run_and_match_prefill(hf_models, tokens):
    cfg, params = phd_jax.load_hf_llama(hf_models[True][0], variant="phd", repeat=2)
    logits = phd_jax.forward(params, cfg, tokens)
    last, _ = phd_jax.prefill(params, cfg, tokens, max_len=32)
    assert cfg.name == "PHD-2" and max_diff(last, logits[:, -1]) < 1e-4


def _copy(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


def _edit_config(path, **changes):
    file = os.path.join(path, "config.json")
    hf = json.load(open(file))
    for k, v in changes.items():
        if v is None:
            hf.pop(k)
        else:
            hf[k] = v
    json.dump(hf, open(file, "w"))


@pytest.mark.parametrize(
    "changes, error, match",
    [
        (dict(model_type="mistral", architectures=["MistralForCausalLM"]), ConfigError, "only Llama checkpoints"),
        (dict(hidden_size=None), ConfigError, "missing required key.*hidden_size"),
        (
            dict(rope_parameters={"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0}),
            ConfigError,
            "rope_type='llama3' is invalid",
        ),
        (dict(rope_scaling={"type": "linear", "factor": 2.0}), ConfigError, "rope_scaling"),
        (dict(attention_bias=True), ConfigError, "attention_bias=True is invalid"),
        (dict(hidden_act="gelu"), ConfigError, "hidden_act='gelu'"),
        (dict(intermediate_size=64), ConfigError, r"mlp.gate_proj.weight.*shape \(80, 32\).*needs \(64, 32\)"),
    ],
)
def test_bad_config_is_a_clear_error(hf_models, tmp_path, changes, error, match):
    path = _copy(hf_models[False][0], tmp_path / "bad")
    _edit_config(path, **changes)
    with pytest.raises(error, match=match):
        phd_jax.load_hf_llama(path)


def test_missing_shard_and_tensor_and_bad_override(tmp_path, hf_models):
    path = str(tmp_path / "sharded")
    _random_llama(path, tie=True, max_shard_size="20KB")
    index = json.load(open(os.path.join(path, "model.safetensors.index.json")))
    shard = sorted(set(index["weight_map"].values()))[1]
    os.rename(os.path.join(path, shard), os.path.join(tmp_path, shard))
    with pytest.raises(FileNotFoundError, match=f"missing: {shard}"):
        phd_jax.load_hf_llama(path)
    os.rename(os.path.join(tmp_path, shard), os.path.join(path, shard))
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if "layers.1.mlp.up" not in k}
    json.dump(index, open(os.path.join(path, "model.safetensors.index.json"), "w"))
    with pytest.raises(ConfigError, match="lacks tensor.*model.layers.1.mlp.up_proj.weight"):
        phd_jax.load_hf_llama(path)
    with pytest.raises(ConfigError, match="num_layers=3 is invalid: is read from the checkpoint"):
        phd_jax.load_hf_llama(hf_models[True][0], num_layers=3)
    with pytest.raises(ConfigError, match="repeat"):
        phd_jax.load_hf_llama(hf_models[True][0], repeat=2)  # vanilla with K=2: say so
    with pytest.raises(FileNotFoundError, match="does not exist"):
        phd_jax.load_hf_llama(str(tmp_path / "nowhere"))


def test_save_refuses_wrong_params_and_leaves_disk_unchanged(tmp_path):
    cfg = tiny_config("vanilla", 1)
    params = phd_jax.init_params(cfg.replace(mlp_dim=32), 0)
    with pytest.raises(ConfigError, match="mlp.gate_proj.weight.*needs"):
        phd_jax.save_hf_llama(params, cfg, str(tmp_path / "x"))
    assert not os.path.exists(tmp_path / "x") and os.listdir(tmp_path) == []
    with pytest.raises(ConfigError, match="qk_norm"):
        phd_jax.save_hf_llama(
            phd_jax.init_params(cfg.replace(qk_norm=True), 0), cfg.replace(qk_norm=True), str(tmp_path / "x")
        )


def test_tokenizer_from_tokenizer_json(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<s>": 0, "</s>": 1, "<pad>": 2, "[UNK]": 3, "to": 4, "be": 5, "or": 6, "not": 7}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<s>", "</s>", "<pad>"])
    tok.save(str(tmp_path / "tokenizer.json"))
    json.dump(
        {"bos_token": "<s>", "eos_token": {"content": "</s>"}, "pad_token": "<pad>"},
        open(tmp_path / "tokenizer_config.json", "w"),
    )
    t = phd_jax.load_hf_tokenizer(str(tmp_path))
    assert (t.vocab_size, t.bos_id, t.eos_id, t.pad_id) == (8, 0, 1, 2)
    assert t.encode("to be or not to be") == [4, 5, 6, 7, 4, 5]
    assert t.decode([4, 5, 6]) == "to be or"
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        phd_jax.load_hf_tokenizer(str(tmp_path / "none"))


# ---- up-training: a vanilla run exported, continued as PHD-2 ------------------------------------

UP_VANILLA_STEPS, UP_PHD_STEPS = 200, 100


def _run_config(**changes):
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from phd_jax.configs.tiny import get_config

    c = get_config()
    c.compilation_cache, c.eval_batches = "", 8
    for k, v in changes.items():
        section = c
        *path, last = k.split(".")
        for p in path:
            section = section[p]
        section[last] = v
    c.checkpoint_every = c.eval_every = c.log_every = c.num_steps
    return c


@pytest.fixture(scope="session")
def uptraining(tmp_path_factory):
    """vanilla S steps -> save_hf_llama -> PHD-2 N steps (init_from=hf:), and PHD-2 from scratch
    for the same N steps; every loss on the same held-out batches. (The longer comparison with
    PHD-2 from scratch for S + N steps is `examples/uptrain.py`, reported in docs/interop.md.)"""
    from phd_jax.data import make_pipeline
    from phd_jax.evaluation import evaluate_loss
    from phd_jax.train import restore_params, train_and_evaluate

    root = tmp_path_factory.mktemp("uptrain")
    train_and_evaluate(
        _run_config(**{"model.variant": "vanilla", "model.repeat": 1, "num_steps": UP_VANILLA_STEPS}),
        str(root / "vanilla"),
        progress=False,
    )
    vcfg, vparams, _ = restore_params(str(root / "vanilla"))
    hf_dir = phd_jax.save_hf_llama(vparams, vcfg, str(root / "hf"))
    up_config = _run_config(num_steps=UP_PHD_STEPS, init_from=f"hf:{hf_dir}")
    batches = make_pipeline(up_config).eval_batches()
    pcfg = vcfg.replace(variant="phd", repeat=2)
    out = {
        "vanilla": evaluate_loss(vparams, vcfg, batches)["loss"],
        "phd_step0": evaluate_loss(vparams, pcfg, batches)["loss"],
    }
    train_and_evaluate(up_config, str(root / "up"), progress=False)
    train_and_evaluate(_run_config(num_steps=UP_PHD_STEPS), str(root / "scratch"), progress=False)
    for name in ("up", "scratch"):
        cfg, params, step = restore_params(str(root / name))
        assert cfg.name == "PHD-2"
        out[name] = evaluate_loss(params, cfg, batches)["loss"]
    return out


def test_uptraining_from_hf_beats_phd_from_scratch(uptraining):
    """Up-training through an exported HF checkpoint: N PHD-2 steps on top of S vanilla steps
    beat N PHD-2 steps from scratch; PHD-2 on the vanilla weights starts near, not at, the
    vanilla loss, and improves on it."""
    print("up-training losses:", uptraining)
    assert uptraining["up"] < uptraining["scratch"] - 0.1
    assert 1e-6 < abs(uptraining["phd_step0"] - uptraining["vanilla"]) < 0.05
    assert uptraining["up"] < uptraining["phd_step0"]


def test_truncated_or_foreign_safetensors_is_a_config_error_naming_the_file(tmp_path):
    """A truncated download (or a file that is not safetensors at all) is a ConfigError that names
    the file, not the safetensors library's bare SafetensorError."""
    cfg = tiny_config("vanilla", 1)
    path = str(tmp_path / "ckpt")
    phd_jax.save_hf_llama(phd_jax.init_params(cfg, 0), cfg, path)
    weights = os.path.join(path, "model.safetensors")
    data = open(weights, "rb").read()
    for content, cause in ((data[: len(data) // 2], "file not fully covered"), (b"<html>not found</html>", "header")):
        with open(weights, "wb") as f:
            f.write(content)
        with pytest.raises(ConfigError) as e:
            phd_jax.load_hf_llama(path)
        message = str(e.value)
        assert message.startswith(f"{weights} is not a readable safetensors file (") and cause in message, message
        assert "truncated" in message and "\n" not in message
