"""Block options (`norm_position`, `qk_norm`, `qkv_bias`, `rope_scaling`): the OLMo2, Qwen2, Qwen3 and
Llama 3 blocks against a literal numpy model, with every PHD variant, prefill + decode, the attention
backends, layer stacking, sharding and the parameter / checkpoint / workdir checks; the defaults
are the block of phd_jax <= 0.2 (the 0.1.0 fixture)."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from helpers import V010_WORKDIR, copy_v010_workdir, max_diff, random_tokens, tiny_config

import phd_jax
from phd_jax import ModelConfig
from phd_jax.errors import ConfigError
from phd_jax.model import param_shapes, rope_inv_freq

fwd = jax.jit(phd_jax.forward, static_argnums=1)

# One option set per block, composed from the per-feature fields (what the Hugging Face mapping uses).
OLMO2 = dict(norm_position="post", qk_norm="projection")
QWEN2_LLAMA3 = dict(qkv_bias=True, rope_scaling="llama3", rope_factor=4.0, rope_original_max_len=16)
QWEN3 = dict(qk_norm="head")
BLOCKS = {"olmo2": OLMO2, "qwen2+llama3-rope": QWEN2_LLAMA3, "qwen3": QWEN3}
VARIANTS = {
    "vanilla": dict(variant="vanilla", repeat=1),
    "PHD-2": dict(variant="phd", repeat=2),
    "PHD-CSWA-2-2-3": dict(variant="phd_cswa", repeat=2, window=2, chunk=3),
}


def perturbed(params, seed=1, scale=0.2):
    """Every parameter moved off its init (norm scales off 1, biases off 0), so each one matters."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return tree.unflatten([x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])


def block_config(block, variant="vanilla", **kw):
    return tiny_config(**{**VARIANTS[variant], **BLOCKS[block], "init_std": 0.2, **kw})


@pytest.fixture(scope="module")
def block_params():
    cache = {}

    def get(block):
        if block not in cache:
            cache[block] = perturbed(phd_jax.init_params(block_config(block), 0))
        return cache[block]

    return get


# ---- an independent model: numpy, float64, one literal loop over layers -----------------------


def _rms(x, scale, eps, axes=(-1,)):
    return x / np.sqrt(np.mean(x * x, axis=axes, keepdims=True) + eps) * scale


def hf_llama3_inv_freq(cfg):
    """transformers' `_compute_llama3_parameters` on the equivalent Llama config."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf = LlamaConfig(
        hidden_size=cfg.num_heads * cfg.head_dim,
        num_attention_heads=cfg.num_heads,
        head_dim=cfg.head_dim,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": cfg.rope_theta,
            "factor": cfg.rope_factor,
            "low_freq_factor": cfg.rope_low_freq_factor,
            "high_freq_factor": cfg.rope_high_freq_factor,
            "original_max_position_embeddings": cfg.rope_original_max_len,
        },
    )
    inv_freq, attention_factor = ROPE_INIT_FUNCTIONS["llama3"](hf, "cpu")
    assert attention_factor == 1.0
    return inv_freq.double().numpy()


def reference_logits(params, cfg, tokens):
    """Vanilla logits `[B, T, vocab]` of the model the block options describe, written out from the
    definitions (OLMo2: h = x + norm(attn(x)), out = h + norm(mlp(h)), q/k normed over the whole
    projection; Qwen2: q/k/v biases; Qwen3: per-head q/k norm; Llama 3: transformers' frequencies)."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    eps, d, rep = cfg.norm_eps, cfg.head_dim, cfg.num_heads // cfg.num_kv_heads
    b, t = tokens.shape
    if cfg.rope_scaling == "llama3":
        inv_freq = hf_llama3_inv_freq(cfg)
    else:
        inv_freq = 1.0 / cfg.rope_theta ** (np.arange(0, d, 2) / d)
    angle = np.arange(t)[:, None] * inv_freq[None, :]
    cos, sin = np.cos(angle)[None, :, None, :], np.sin(angle)[None, :, None, :]

    def rope(x):
        x1, x2 = x[..., : d // 2], x[..., d // 2 :]
        return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)

    def project(h, lin, heads):
        out = np.einsum("bte,ehd->bthd", h, lin["kernel"])
        return out + lin["bias"] if cfg.qkv_bias else out

    def qk_norm(x, scale):
        if cfg.qk_norm == "head":
            return _rms(x, scale, eps)
        if cfg.qk_norm == "projection":  # [B, T, heads*D] as one vector per token
            flat = x.reshape(b, t, -1)
            return _rms(flat, scale.reshape(-1), eps).reshape(x.shape)
        return x

    x = p["embed"]["embedding"][np.asarray(tokens)]
    causal = np.tril(np.ones((t, t), bool))
    for i in range(cfg.num_layers):
        layer = jax.tree.map(lambda a: a[i], p["layers"])
        a = layer["attention"]
        h = x if cfg.norm_position == "post" else _rms(x, layer["attention_norm"]["scale"], eps)
        q = qk_norm(project(h, a["query"], cfg.num_heads), a.get("query_norm", {}).get("scale"))
        k = qk_norm(project(h, a["key"], cfg.num_kv_heads), a.get("key_norm", {}).get("scale"))
        v = project(h, a["value"], cfg.num_kv_heads)
        q, k = rope(q), rope(k)
        k, v = np.repeat(k, rep, axis=2), np.repeat(v, rep, axis=2)
        s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d)
        s = np.where(causal, s, -np.inf)
        w = np.exp(s - s.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        o = np.einsum("bhqk,bkhd->bqhd", w, v)
        attn = np.einsum("bthd,hde->bte", o, a["out"]["kernel"])

        def mlp(h):
            m = layer["mlp"]
            gate, up = h @ m["gate"]["kernel"], h @ m["up"]["kernel"]
            return (gate / (1 + np.exp(-gate)) * up) @ m["down"]["kernel"]

        if cfg.norm_position == "post":
            x = x + _rms(attn, layer["post_attention_norm"]["scale"], eps)
            x = x + _rms(mlp(x), layer["post_mlp_norm"]["scale"], eps)
        else:
            x = x + attn
            x = x + mlp(_rms(x, layer["mlp_norm"]["scale"], eps))
    x = _rms(x, p["final_norm"]["scale"], eps)
    return x @ p["embed"]["embedding"].T


@pytest.mark.parametrize("block", [*BLOCKS, "llama"])
def test_block_equals_a_literal_numpy_model(block, block_params):
    if block == "llama":  # the default block, the same reference
        cfg = tiny_config("vanilla", 1, init_std=0.2)
        params = perturbed(phd_jax.init_params(cfg, 0))
    else:
        cfg, params = block_config(block), block_params(block)
    tokens = random_tokens(cfg, 2, 20, seed=3)  # positions past rope_original_max_len = 16
    ref = reference_logits(params, cfg, tokens)
    got = np.asarray(fwd(params, cfg, tokens))
    assert np.abs(ref).max() > 1.0  # not a degenerate model
    np.testing.assert_allclose(got, ref, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "rope",
    [
        dict(rope_theta=500000.0, rope_factor=8.0, rope_original_max_len=8192),  # Llama 3.1's values
        dict(rope_theta=500000.0, rope_factor=32.0, rope_original_max_len=8192),  # Llama 3.2's
        dict(
            rope_theta=10000.0,
            rope_factor=4.0,
            rope_low_freq_factor=2.0,
            rope_high_freq_factor=8.0,
            rope_original_max_len=64,
        ),
    ],
)
def test_llama3_rope_frequencies_equal_transformers(rope):
    cfg = ModelConfig(head_dim=128, num_heads=2, num_kv_heads=2, rope_scaling="llama3", **rope)
    ours, ref = np.asarray(rope_inv_freq(cfg), np.float64), hf_llama3_inv_freq(cfg)
    plain = np.asarray(rope_inv_freq(cfg.replace(rope_scaling="none")), np.float64)
    np.testing.assert_allclose(ours, ref, rtol=2e-6)
    assert (ours < plain * 0.99).any() and (ours == plain).any()  # low frequencies rescaled, high ones kept
    assert np.isclose(ours, plain / cfg.rope_factor, rtol=1e-6).any()


# ---- every option with every variant, prefill + decode, K = 1 ---------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("block", list(BLOCKS))
def test_prefill_then_decode_equals_forward(block, variant, block_params):
    cfg, params = block_config(block, variant), block_params(block)
    tokens = random_tokens(cfg, 2, 12, seed=5)
    full = fwd(params, cfg, tokens)
    logits, state = phd_jax.prefill(params, cfg, tokens[:, :7], max_len=16)
    diffs = [max_diff(logits, full[:, 6])]
    for n in range(7, 12):
        logits, state = phd_jax.decode_step(params, cfg, state, tokens[:, n])
        diffs.append(max_diff(logits, full[:, n]))
    assert max(diffs) <= 2e-4, diffs
    if variant == "vanilla":
        np.testing.assert_allclose(full, reference_logits(params, cfg, tokens), atol=2e-4, rtol=1e-4)
    else:  # the hidden tokens change the outputs
        assert max_diff(full, fwd(params, block_config(block), tokens)) > 1e-3


@pytest.mark.parametrize("block", list(BLOCKS))
def test_phd_with_one_copy_is_vanilla(block, block_params):
    params = block_params(block)
    tokens = random_tokens(block_config(block), 2, 9)
    vanilla = fwd(params, block_config(block), tokens)
    for variant in ("phd", "phd_cswa"):
        extra = dict(window=2, chunk=3) if variant == "phd_cswa" else {}
        cfg = tiny_config(variant, 1, init_std=0.2, **BLOCKS[block], **extra)
        assert max_diff(fwd(params, cfg, tokens), vanilla) <= 1e-5


def test_every_option_at_once_with_every_backend_stacking_and_remat():
    """All four features together (post-norm, per-head q/k norm, biases, llama3 rope) under PHD-CSWA:
    blocksparse and splash (interpret mode on CPU) equal dense; unstacked, rematerialised layers
    equal the scanned model, loss and gradients."""
    opts = dict(norm_position="post", qk_norm="head", qkv_bias=True, rope_scaling="llama3", rope_original_max_len=8)
    cfg = tiny_config("phd_cswa", 2, 2, 3, init_std=0.2, **opts)
    params = perturbed(phd_jax.init_params(cfg, 0))
    tokens = random_tokens(cfg, 1, 11)
    dense = fwd(params, cfg.replace(attention="dense"), tokens)
    assert max_diff(fwd(params, cfg, tokens), dense) <= 1e-5
    splash = cfg.replace(attention="splash", block_q=128, block_kv=128)
    assert max_diff(fwd(params, splash, tokens), dense) <= 1e-5

    def loss(params, cfg):
        return jnp.mean(phd_jax.forward(params, cfg, tokens) ** 2)

    grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    ref_loss, ref_grads = grad(params, cfg)
    unstacked = {k: v for k, v in params.items() if k != "layers"}
    for i in range(cfg.num_layers):
        unstacked[f"layers_{i}"] = jax.tree.map(lambda x: x[i], params["layers"])
    got_loss, got_grads = grad(unstacked, cfg.replace(scan_layers=False, remat="full"))
    assert abs(float(got_loss) - float(ref_loss)) <= 1e-6
    assert max_diff(got_grads["layers_1"], jax.tree.map(lambda x: x[1], ref_grads["layers"])) <= 1e-5
    assert max_diff(got_grads["final_norm"], ref_grads["final_norm"]) <= 1e-5


def test_sharded_forward_equals_one_device():
    """New parameters (q/k/v biases, whole-projection norm scales, post-norm scales) carry logical
    axes, so the default rules shard them; on a (data 2, fsdp 2, tensor 2) mesh of fake devices
    the forward pass equals one device's."""
    import flax.linen as nn

    from phd_jax.train import sharding as shd
    from phd_jax.train.config import base_config, logical_rules

    cfg = tiny_config("phd", 2, vocab_size=64, qkv_bias=True, init_std=0.2, **OLMO2)
    params = perturbed(phd_jax.init_params(cfg, 0))
    tokens = random_tokens(cfg, 4, 9)
    config = base_config()
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2
    mesh, rules = shd.make_mesh(config), logical_rules(config)
    specs = shd.param_specs(cfg, rules, mesh)
    attn = specs["layers"]["attention"]
    assert tuple(attn["query"]["bias"]) == (None, "tensor", None)
    assert tuple(attn["key_norm"]["scale"]) == (None, "tensor", None)
    assert tuple(specs["layers"]["post_mlp_norm"]["scale"]) == (None, "fsdp")
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        sharded = jax.device_put(params, shd.shardings_like(specs, mesh))
        assert len(sharded["layers"]["attention"]["query"]["bias"].sharding.device_set) == 8
        out = fwd(sharded, cfg, tokens)
    assert max_diff(out, fwd(params, cfg, tokens)) <= 1e-5


# ---- defaults, old spellings, and the checks ----------------------------------------------------


def test_defaults_are_the_0_1_0_block():
    """A model_config.json without the new fields (0.1.0's) gives the Llama block: the saved
    parameters are exactly the tree the defaults make, and the new fields' defaults name it."""
    from phd_jax.train import restore_params

    cfg, params, _ = restore_params(V010_WORKDIR)
    with open(os.path.join(V010_WORKDIR, "model_config.json")) as f:
        saved = json.load(f)
    assert "norm_position" not in saved and saved["qk_norm"] is False
    assert (cfg.norm_position, cfg.qk_norm, cfg.qkv_bias, cfg.rope_scaling) == ("pre", "none", False, "none")
    shapes = param_shapes(cfg)
    assert jax.tree.structure(params) == jax.tree.structure(shapes)
    assert jax.tree.map(lambda x: x.shape, params) == jax.tree.map(lambda x: x.shape, shapes)
    default = ModelConfig(**{k: v for k, v in saved.items() if k != "qk_norm"})
    assert default == cfg and hash(default) == hash(cfg)
    tokens = random_tokens(cfg, 1, 8)
    assert np.array_equal(fwd(params, cfg, tokens), fwd(params, default, tokens))


def test_qk_norm_booleans_are_read_as_names(tmp_path):
    from phd_jax.train.checkpoint import load_model_config
    from phd_jax.train.config import base_config, model_config

    assert ModelConfig(qk_norm=True) == ModelConfig(qk_norm="head")
    assert ModelConfig(qk_norm=np.bool_(False)) == ModelConfig(qk_norm="none") == ModelConfig()
    (tmp_path / "model_config.json").write_text(json.dumps({**ModelConfig().__dict__, "qk_norm": True}))
    assert load_model_config(str(tmp_path)).qk_norm == "head"
    config = base_config()
    config.model.qk_norm = True  # a config file of phd_jax <= 0.2
    assert model_config(config).qk_norm == "head"
    config.model.qk_norm = "projection"
    assert model_config(config).qk_norm == "projection"
    with pytest.raises(ConfigError, match=r"config.model.qk_norm='olmo2' is invalid: allowed: none, head, projection"):
        config.model.qk_norm = "olmo2"
        model_config(config)
    with pytest.raises(ConfigError, match=r"ModelConfig.rope_high_freq_factor=1.0 is invalid: must be .* > 1"):
        ModelConfig(rope_high_freq_factor=1.0)
    from phd_jax.evaluation.run import resolve_run  # a 0.1.0 run (qk_norm: false) evaluated with either spelling

    for same in (False, "none"):
        assert resolve_run(V010_WORKDIR, overrides={"model.qk_norm": same}).changes == {}
    with pytest.raises(ConfigError, match=r"config.model.qk_norm='head' is invalid: contradicts the checkpoint"):
        resolve_run(V010_WORKDIR, overrides={"model.qk_norm": "head"})


@pytest.mark.parametrize(
    "other,message",
    [
        (dict(norm_position="post"), r"norm_position \(config 'pre', params 'post'\)"),
        (dict(qk_norm="projection"), r"qk_norm \(config 'none', params 'projection'\)"),
        (dict(qkv_bias=True), r"qkv_bias \(config False, params True\)"),
    ],
)
def test_params_of_another_block_are_refused_naming_the_field(other, message):
    with pytest.raises(ValueError, match=r"params do not fit the config: " + message):
        phd_jax.check_params(param_shapes(tiny_config(**other)), tiny_config())
    head = tiny_config(qk_norm="head", scan_layers=False)  # same names, other shapes
    with pytest.raises(ValueError, match=r"qk_norm \(config 'head', params 'projection'\)"):
        phd_jax.check_params(param_shapes(head.replace(qk_norm="projection")), head)


def test_checkpoint_and_workdir_of_another_block_are_refused(tmp_path):
    """A 0.1.0 (pre-norm) checkpoint under a model_config.json that says post-norm is refused by
    name, not half restored; its run config resumes with today's spelling of the defaults and is
    refused with another block option."""
    from phd_jax.train import load_run_config, restore_params
    from phd_jax.train.checkpoint import check_workdir

    wd = copy_v010_workdir(tmp_path)
    path = tmp_path / "run" / "model_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "norm_position": "post"}))
    with pytest.raises(ConfigError, match=r"checkpoints/4 does not match model_config.json .*norm_position "):
        restore_params(wd)

    saved = load_run_config(V010_WORKDIR).to_dict()
    assert saved["model"]["qk_norm"] is False and "norm_position" not in saved["model"]
    today = {**saved, "model": {**ModelConfig().__dict__, **saved["model"], "qk_norm": "none"}}
    config = ml_collections.ConfigDict(today)  # the same run, written with today's fields
    assert check_workdir(V010_WORKDIR, config) is not None  # resumable
    for field, value in (("norm_position", "post"), ("qk_norm", "head"), ("rope_scaling", "llama3")):
        changed = ml_collections.ConfigDict({**today, "model": {**today["model"], field: value}})
        with pytest.raises(ConfigError, match=rf"config.model.{field}='{value}' does not match the run"):
            check_workdir(V010_WORKDIR, changed)


@pytest.mark.parametrize("name", ["paper_550m", "paper_1b"])
def test_paper_configs_use_the_olmo2_block(name):
    """The paper builds on OLMo2: its configs use that block, and docs/training.md gives their size."""
    import importlib

    from phd_jax.model import num_params
    from phd_jax.train.config import model_config

    cfg = model_config(importlib.import_module(f"phd_jax.configs.{name}").get_config())
    assert (cfg.norm_position, cfg.qk_norm, cfg.qkv_bias, cfg.rope_scaling) == ("post", "projection", False, "none")
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "training.md")) as f:
        row = next(line for line in f if line.startswith(f"| `configs/{name}.py`"))
    assert f"| {num_params(param_shapes(cfg)):,} |" in row
