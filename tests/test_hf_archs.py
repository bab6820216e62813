"""OLMo2, Qwen2, Qwen3 and Llama (with and without Llama 3 rope scaling) through `load_hf` /
`save_hf` and `train.py --config.init_from=hf:PATH`, against transformers' own classes.

Every checkpoint is a tiny random model built offline by transformers (no download), once per
session; every weight (norms and biases too) is non-trivial.
"""

import contextlib
import io
import json
import os
import shutil

import jax
import numpy as np
import pytest

import phd_jax
from phd_jax.errors import ConfigError
from tests.helpers import max_diff

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 300  # the byte tokenizer's 259 ids fit, so train.py can run on these checkpoints
DIMS = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,  # GQA
    max_position_embeddings=64,
    rms_norm_eps=1e-5,
    pad_token_id=None,
    bos_token_id=None,
    eos_token_id=None,
)
LLAMA3_ROPE = dict(
    rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=16
)
# name -> (config class, model class, config.json extras, the ModelConfig block it must give)
ARCHS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}, {}),
    "llama3": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(rope_parameters={"rope_theta": 5000.0, **LLAMA3_ROPE}),
        dict(rope_scaling="llama3", rope_factor=8.0, rope_original_max_len=16),
    ),
    "qwen2": (
        "Qwen2Config",
        "Qwen2ForCausalLM",
        dict(sliding_window=16, use_sliding_window=False),  # present but unused: accepted
        dict(qkv_bias=True),
    ),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=16), dict(qk_norm="head", head_dim=16)),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", {}, dict(norm_position="post", qk_norm="projection")),
}
NAMES = list(ARCHS)
TIED = {"llama": True, "llama3": False, "qwen2": True, "qwen3": False, "olmo2": False}  # the other tests' models
TOL = 2e-5  # float32; the models' logits are O(1)


def _build(path, name, tie, dtype=torch.float32, seed=0, **save_kw):
    cfg_cls, model_cls, extra, _ = ARCHS[name]
    torch.manual_seed(seed)
    cfg = getattr(transformers, cfg_cls)(**{**DIMS, **extra}, tie_word_embeddings=tie)
    model = getattr(transformers, model_cls)(cfg).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.2 if "norm" not in pname else 0.1) + ("norm" in pname))
    model = model.to(dtype)
    model.save_pretrained(path, **save_kw)
    return model


@pytest.fixture(scope="session")
def hf_archs(tmp_path_factory):
    """(name, tied) -> (checkpoint directory, the transformers model)."""
    root = tmp_path_factory.mktemp("hf_archs")
    out = {}
    for i, name in enumerate(NAMES):
        for tie in (True, False):
            path = str(root / f"{name}-{'tied' if tie else 'untied'}")
            out[name, tie] = (path, _build(path, name, tie, seed=2 * i + tie))
    return out


def _model(hf_archs, name):
    return hf_archs[name, TIED[name]]


@pytest.fixture(scope="session")
def tokens():
    return np.random.default_rng(0).integers(0, VOCAB, (2, 20)).astype(np.int32)


def _reference_logits(model, tokens):
    with torch.no_grad():
        return model(torch.from_numpy(tokens.astype(np.int64))).logits.numpy()


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("name", NAMES)
def test_logits_equal_transformers(hf_archs, tokens, name, tie):
    path, model = hf_archs[name, tie]
    cfg, params = phd_jax.load_hf(path, attention="dense")
    for field, value in ARCHS[name][3].items():
        assert getattr(cfg, field) == value, field
    assert (cfg.tie_embeddings, cfg.num_heads, cfg.num_kv_heads) == (tie, 4, 2)
    ours = np.asarray(jax.jit(phd_jax.forward, static_argnums=1)(params, cfg, tokens))
    diff = np.abs(ours - _reference_logits(model, tokens)).max()
    assert diff < TOL, diff


@pytest.mark.parametrize("name", NAMES)
def test_greedy_generation_gives_the_same_tokens(hf_archs, tokens, name):
    path, model = _model(hf_archs, name)
    cfg, params = phd_jax.load_hf(path)
    prompt, new = tokens[:, :8], 10
    ours = np.asarray(phd_jax.generate(params, cfg, prompt, new, max_len=prompt.shape[1] + new))
    with torch.no_grad():
        ref = model.generate(
            torch.from_numpy(prompt.astype(np.int64)), max_new_tokens=new, min_new_tokens=new, do_sample=False
        )
    np.testing.assert_array_equal(ours, ref.numpy()[:, prompt.shape[1] :])


def _tensors(path):
    from safetensors.numpy import load_file

    out = {}
    for f in sorted(os.listdir(path)):
        if f.endswith(".safetensors"):
            out.update(load_file(os.path.join(path, f)))
    return out


@pytest.mark.parametrize("name", NAMES)
def test_save_then_load_is_exact_and_runs_in_transformers(hf_archs, tokens, tmp_path, name):
    """Vanilla: saved under the original names, the same tensors as transformers wrote, sharded or
    not; transformers' Auto class picks the original architecture and gives our logits."""
    path, _ = _model(hf_archs, name)
    cfg, params = phd_jax.load_hf(path)
    out = phd_jax.save_hf(params, cfg, str(tmp_path / "out"), max_shard_size="20KB" if name == "qwen2" else None)
    written = json.load(open(os.path.join(out, "config.json")))
    original = json.load(open(os.path.join(path, "config.json")))
    assert (written["model_type"], written["architectures"]) == (original["model_type"], original["architectures"])
    theirs, ours_saved = _tensors(path), _tensors(out)
    assert set(ours_saved) == set(theirs)
    assert all(np.array_equal(ours_saved[k], theirs[k]) for k in theirs)
    cfg2, params2 = phd_jax.load_hf(out)
    assert cfg2 == cfg and max_diff(params, params2) == 0
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(reloaded).__name__ == ARCHS[name][1]
    ours = np.asarray(phd_jax.forward(params, cfg, tokens))
    assert np.abs(ours - _reference_logits(reloaded, tokens)).max() < TOL


@pytest.mark.parametrize("name", NAMES)
def test_phd_model_is_saved_under_its_own_name_refused_by_transformers(hf_archs, tmp_path, name):
    path, _ = _model(hf_archs, name)
    cfg, params = phd_jax.load_hf(path, variant="phd", repeat=2)
    out = phd_jax.save_hf(params, cfg, str(tmp_path / "phd"))
    written = json.load(open(os.path.join(out, "config.json")))
    base = json.load(open(os.path.join(path, "config.json")))["model_type"]
    assert written["model_type"] == f"phd_{base}"
    assert written["architectures"] == ["Phd" + ARCHS[name][1]]
    with pytest.raises((ValueError, KeyError), match=f"phd_{base}"):
        transformers.AutoModelForCausalLM.from_pretrained(out)
    cfg2, params2 = phd_jax.load_hf(out)
    assert cfg2 == cfg and cfg2.name == "PHD-2" and max_diff(params, params2) == 0


@pytest.mark.parametrize("name", NAMES)
def test_loaded_as_phd2_prefill_and_decode_equal_forward(hf_archs, tokens, name):
    path, _ = _model(hf_archs, name)
    cfg, params = phd_jax.load_hf(path, variant="phd", repeat=2)
    logits = np.asarray(phd_jax.forward(params, cfg, tokens))
    assert np.isfinite(logits).all()
    prompt = 12
    last, state = phd_jax.prefill(params, cfg, tokens[:, :prompt], max_len=tokens.shape[1])
    worst = max_diff(last, logits[:, prompt - 1])
    for n in range(prompt, tokens.shape[1] - 1):
        step, state = phd_jax.decode_step(params, cfg, state, tokens[:, n])
        worst = max(worst, max_diff(step, logits[:, n]))
    assert worst < 1e-4, worst
    vanilla_cfg, vanilla = phd_jax.load_hf(path)
    assert max_diff(phd_jax.forward(vanilla, vanilla_cfg, tokens), logits) > 1e-3  # K = 2 is another model


@pytest.mark.parametrize(
    "dtype, stored", [(torch.bfloat16, "BF16"), (torch.float16, "F16")], ids=["bfloat16", "float16"]
)
def test_half_precision_checkpoints_round_trip(tmp_path, dtype, stored):
    path = str(tmp_path / "half")
    model = _build(path, "olmo2", tie=False, dtype=dtype, max_shard_size="30KB")
    cfg, params = phd_jax.load_hf(path)
    assert cfg.param_dtype == {"BF16": "bfloat16", "F16": "float16"}[stored]
    ref = model.model.layers[1].self_attn.q_norm.weight.detach().float().numpy()
    got = np.asarray(params["layers"]["attention"]["query_norm"]["scale"][1], np.float32)
    assert np.array_equal(got.reshape(-1), ref)
    out = phd_jax.save_hf(params, cfg, str(tmp_path / "out"))
    from safetensors import safe_open

    with safe_open(os.path.join(out, "model.safetensors"), "np") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {stored}
    theirs, ours = _tensors(path), _tensors(out)
    assert all(np.array_equal(ours[k].view(np.uint16), theirs[k].view(np.uint16)) for k in theirs)


# ---- unsupported features and mismatched tensors ------------------------------------------------


def _copy(src, dst, **changes):
    shutil.copytree(src, dst)
    file = os.path.join(dst, "config.json")
    hf = json.load(open(file))
    hf.update(changes)
    json.dump(hf, open(file, "w"))
    return str(dst)


@pytest.mark.parametrize(
    "name, changes, match",
    [
        (
            "qwen2",
            dict(use_sliding_window=True, sliding_window=8, layer_types=["full_attention", "sliding_attention"]),
            r"use_sliding_window=True is invalid: layer\(s\) \[1\] use sliding-window attention",
        ),
        ("qwen3", dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}), "rope_type='yarn'"),
        (
            "qwen3",
            dict(model_type="qwen3_moe", architectures=["Qwen3MoeForCausalLM"], num_experts=8),
            r"model_type 'qwen3_moe' \(mixture of experts: num_experts\)",
        ),
        ("olmo2", dict(attention_bias=True), "attention_bias=True is invalid"),
        ("llama", dict(mlp_bias=True), "mlp_bias=True is invalid"),
        ("qwen2", dict(hidden_act="gelu"), "hidden_act='gelu' is invalid"),
        ("olmo2", dict(architectures=["LlamaForCausalLM"]), r"architectures=\['LlamaForCausalLM'\] is invalid"),
    ],
)
def test_unsupported_feature_is_refused_by_name(hf_archs, tmp_path, name, changes, match):
    path = _copy(_model(hf_archs, name)[0], tmp_path / "bad", **changes)
    with pytest.raises(ConfigError, match=match):
        phd_jax.load_hf(path)


@pytest.mark.parametrize(
    "name, changes, match",
    [  # the tensors of one architecture under another's config, or of other dimensions
        (
            "qwen2",
            dict(model_type="llama", architectures=["LlamaForCausalLM"]),
            r"unexpected.*layers.0.self_attn.q_proj.bias",
        ),
        (
            "llama",
            dict(model_type="qwen3", architectures=["Qwen3ForCausalLM"]),
            r"lacks.*layers.0.self_attn.q_norm.weight",
        ),
        (
            "olmo2",
            dict(num_key_value_heads=4),
            r"'model.layers.0.self_attn.k_proj.weight' has shape \(16, 32\).*\(32, 32\)",
        ),
        ("qwen3", dict(head_dim=8), r"'model.layers.0.self_attn.q_proj.weight' has shape \(64, 32\)"),
    ],
)
def test_tensor_that_does_not_match_the_config_is_named(hf_archs, tmp_path, name, changes, match):
    path = _copy(_model(hf_archs, name)[0], tmp_path / "bad", **changes)
    with pytest.raises(ConfigError, match=match):
        phd_jax.load_hf(path)


def test_a_block_no_architecture_has_cannot_be_saved(tmp_path):
    cfg = phd_jax.ModelConfig(
        vocab_size=64,
        num_layers=1,
        d_model=16,
        num_heads=2,
        num_kv_heads=1,
        head_dim=8,
        mlp_dim=32,
        norm_position="post",
        qk_norm="head",
    )
    with pytest.raises(ConfigError, match=r"norm_position='post', qk_norm='head'.*Olmo2ForCausalLM"):
        phd_jax.save_hf(phd_jax.init_params(cfg, 0), cfg, str(tmp_path / "x"))
    assert os.listdir(tmp_path) == []


# ---- train.py --config.init_from=hf:PATH ---------------------------------------------------------


def _byte_level_tokenizer(path):
    """A real byte-level BPE tokenizer.json (no merges): 256 byte symbols and an end-of-text token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {c: i for i, c in enumerate(pre_tokenizers.ByteLevel.alphabet())}
    vocab["<|endoftext|>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab, []))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    tok.save(os.path.join(path, "tokenizer.json"))
    json.dump({"eos_token": "<|endoftext|>"}, open(os.path.join(path, "tokenizer_config.json"), "w"))


LR = 1e-3
TRAINED = ("llama", "qwen2", "qwen3", "olmo2")  # the four architectures (Llama 3 is Llama's, rope aside)


@pytest.fixture(scope="module")
def uptrained(hf_archs, tmp_path_factory):
    """One PHD-2 train.py step (in process) from a checkpoint of each architecture, the run config
    left at the tiny config's dimensions (which differ from the checkpoints'). Qwen2's checkpoint
    carries a tokenizer.json, the others none (the byte tokenizer)."""
    from phd_jax.configs.tiny import get_config
    from phd_jax.train import train_and_evaluate

    root = tmp_path_factory.mktemp("init_from")
    out = {}
    for name in TRAINED:
        path = str(root / f"{name}-hf")
        shutil.copytree(_model(hf_archs, name)[0], path)
        if name == "qwen2":
            _byte_level_tokenizer(path)
        c = get_config("PHD-2")
        c.compilation_cache, c.sample_tokens, c.eval_batches = "", 0, 1
        c.num_steps = c.log_every = c.eval_every = c.checkpoint_every = 1
        c.learning_rate, c.warmup_steps, c.weight_decay, c.batch_size = LR, 0, 0.0, 8
        c.init_from = f"hf:{path}"
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            metrics = train_and_evaluate(c, str(root / name), progress=False, devices=jax.devices()[:1])
        out[name] = dict(path=path, workdir=str(root / name), metrics=metrics, printed=printed.getvalue())
    return out


@pytest.mark.parametrize("name", TRAINED)
def test_one_train_step_from_hf_checkpoint(uptrained, name):
    from phd_jax.train import restore_params

    run = uptrained[name]
    saved = json.load(open(os.path.join(run["workdir"], "config.json")))
    expected_cfg, hf_params = phd_jax.load_hf(run["path"], variant="phd", repeat=2)
    for field, value in {
        "d_model": 32,
        "mlp_dim": 48,
        "num_kv_heads": 2,
        "vocab_size": VOCAB,
        **ARCHS[name][3],
    }.items():
        assert saved["model"][field] == value, field
    assert saved["model"]["variant"] == "phd" and saved["model"]["repeat"] == 2  # PHD fields: the run's
    assert "the architecture comes from the checkpoint" in run["printed"] and "model.mlp_dim=64->48" in run["printed"]
    tokenizer = saved["data"]["tokenizer"]
    assert tokenizer == (f"hf:{run['path']}" if name == "qwen2" else "byte")
    cfg, params, step = restore_params(run["workdir"])
    assert step == 1 and cfg.name == "PHD-2" and np.isfinite(run["metrics"]["loss"])
    for f in ("norm_position", "qk_norm", "qkv_bias", "rope_scaling", "head_dim", "tie_embeddings"):
        assert getattr(cfg, f) == getattr(expected_cfg, f), f
    # started from the checkpoint's weights, then one Adam step of size ~LR moved every one of them
    moved = max_diff(params, hf_params)
    assert 0 < moved <= 2 * LR, moved


def test_config_spellings_of_older_transformers(hf_archs):
    """transformers < 5 wrote `rope_theta` + `rope_scaling` and no `layer_types`: the same models."""
    from phd_jax.interop import config_from_hf

    v5 = json.load(open(os.path.join(_model(hf_archs, "llama3")[0], "config.json")))
    v4 = {k: v for k, v in v5.items() if k != "rope_parameters"}
    v4["rope_theta"] = v5["rope_parameters"]["rope_theta"]
    v4["rope_scaling"] = {k: v for k, v in v5["rope_parameters"].items() if k != "rope_theta"}
    assert config_from_hf(v4) == config_from_hf(v5) and config_from_hf(v5).rope_scaling == "llama3"
    with pytest.raises(ConfigError, match="rope_scaling=.* disagrees with rope_parameters"):
        config_from_hf({**v5, "rope_scaling": {"rope_type": "default"}})
    qwen2 = json.load(open(os.path.join(_model(hf_archs, "qwen2")[0], "config.json")))
    qwen2 = {k: v for k, v in qwen2.items() if k != "layer_types"}
    sliding = dict(use_sliding_window=True, sliding_window=8)
    assert config_from_hf({**qwen2, **sliding, "max_window_layers": 2}).qkv_bias  # no layer slides
    with pytest.raises(ConfigError, match=r"layer\(s\) \[1\] use sliding-window attention"):
        config_from_hf({**qwen2, **sliding, "max_window_layers": 1})


def test_init_from_an_unsupported_checkpoint_is_refused_before_the_workdir_is_touched(hf_archs, tmp_path):
    from phd_jax.configs.tiny import get_config
    from phd_jax.train import train_and_evaluate

    path = _copy(_model(hf_archs, "qwen3")[0], tmp_path / "yarn", rope_parameters={"rope_type": "yarn", "factor": 4.0})
    c = get_config("PHD-2")
    c.init_from, c.compilation_cache = f"hf:{path}", ""
    with pytest.raises(ConfigError, match=r"config.init_from='hf:.*yarn' is invalid: .*rope_type='yarn'"):
        train_and_evaluate(c, str(tmp_path / "run"), progress=False)
    c.init_from = f"hf:{tmp_path / 'nowhere'}"
    with pytest.raises(ConfigError, match=r"config.init_from='hf:.*nowhere' is invalid: .* does not exist"):
        train_and_evaluate(c, str(tmp_path / "run"), progress=False)
    assert not os.path.exists(tmp_path / "run")


def test_the_tokenizer_travels_with_the_checkpoint(hf_archs, tmp_path):
    src = tmp_path / "tokenizer"
    src.mkdir()
    _byte_level_tokenizer(str(src))
    cfg, params = phd_jax.load_hf(_model(hf_archs, "qwen2")[0])
    out = phd_jax.save_hf(params, cfg, str(tmp_path / "out"), tokenizer_dir=str(src))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        assert open(os.path.join(out, f), "rb").read() == open(src / f, "rb").read()
    text = "To be, or not to be: that is the question."
    ours, theirs = phd_jax.load_hf_tokenizer(out), phd_jax.load_hf_tokenizer(str(src))
    assert ours.encode(text) == theirs.encode(text) and ours.decode(ours.encode(text)) == text
    assert ours.eos_id == 256
