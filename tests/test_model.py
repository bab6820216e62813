"""The model against independent references: dense backend, vanilla, K=1, causality."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import VARIANT_GRID, max_diff, random_tokens, tiny_config

import phd_jax
from phd_jax.masks import Layout
from phd_jax.model import run_layout

fwd = jax.jit(phd_jax.forward, static_argnums=1)


def _logits_loss_grads(params, cfg, tokens):
    """(logits, loss, parameter gradients) of next-token cross-entropy, in one compile."""

    def loss(p):
        logits = phd_jax.forward(p, cfg, tokens)
        nll = -jnp.mean(jax.nn.log_softmax(logits)[:, :-1] * jax.nn.one_hot(tokens[:, 1:], cfg.vocab_size))
        return nll, logits

    (nll, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return logits, nll, grads


@pytest.mark.parametrize("name", list(VARIANT_GRID))
def test_blocksparse_model_equals_dense_model(name):
    cfg = tiny_config(**VARIANT_GRID[name])
    params = phd_jax.init_params(cfg, 0)
    tokens = random_tokens(cfg, 2, 11)
    ref = _logits_loss_grads(params, cfg.replace(attention="dense"), tokens)
    got = _logits_loss_grads(params, cfg, tokens)
    assert ref[0].shape == (2, 11, cfg.vocab_size)
    assert max_diff(got[0], ref[0]) <= 1e-5
    assert max_diff(got[2], ref[2]) <= 1e-4


@pytest.mark.parametrize("name", ["PHD-3", "PHD-CSWA-3-4-3"])
def test_splash_model_equals_dense_model(name):
    cfg = tiny_config(**VARIANT_GRID[name], attention="splash", block_q=128, block_kv=128)
    params = phd_jax.init_params(cfg, 0)
    tokens = random_tokens(cfg, 1, 9)
    assert max_diff(fwd(params, cfg, tokens), fwd(params, cfg.replace(attention="dense"), tokens)) <= 1e-5


def _stream_kv(params, cfg, tokens, kind):
    lay = Layout.for_config(cfg, tokens.shape[1], kind)
    _, (k, v) = run_layout(params, cfg, lay, tokens, lay.logit_rows, collect_kv=True)
    return k, v, lay.tokens[1]


@pytest.mark.parametrize("name", ["PHD-3", "PHD-SWA-3-4-inf", "PHD-CSWA-3-4-3", "PHD-CSWA-2-4-2"])
@pytest.mark.parametrize("attention", ["dense", "blocksparse"])
def test_original_token_stream_is_a_vanilla_model(name, attention):
    """Keys and values of copy 0 at every layer equal a vanilla model's with the same parameters."""
    cfg = tiny_config(**VARIANT_GRID[name], attention=attention)
    vanilla = tiny_config("vanilla", 1, attention=attention)
    params = phd_jax.init_params(cfg, 0)
    tokens = random_tokens(cfg, 2, 10)
    k, v, copy = _stream_kv(params, cfg, tokens, "paper" if attention == "dense" else "kernel")
    k0, v0, _ = _stream_kv(params, vanilla, tokens, "kernel")
    assert k.shape[0] == cfg.num_layers
    assert max_diff(k[:, :, copy == 0], k0) <= 1e-5
    assert max_diff(v[:, :, copy == 0], v0) <= 1e-5


@pytest.mark.parametrize(
    "variant,extra", [("phd", {}), ("phd_swa", dict(window=3)), ("phd_cswa", dict(window=3, chunk=2)), ("naive", {})]
)
def test_any_variant_with_k1_is_vanilla(variant, extra):
    cfg = tiny_config(variant, 1, position_mode="shared", **extra)
    params = phd_jax.init_params(cfg, 0)
    tokens = random_tokens(cfg, 2, 12)
    assert max_diff(fwd(params, cfg, tokens), fwd(params, tiny_config("vanilla", 1), tokens)) <= 1e-6


def test_window_zero_is_phd_and_large_chunk_is_swa():
    tokens = random_tokens(tiny_config(), 2, 12)
    params = phd_jax.init_params(tiny_config(), 0)
    phd = fwd(params, tiny_config("phd", 3), tokens)
    assert max_diff(fwd(params, tiny_config("phd_swa", 3, 0), tokens), phd) <= 1e-6
    assert max_diff(fwd(params, tiny_config("phd_cswa", 3, 0, 2), tokens), phd) <= 1e-6
    swa = fwd(params, tiny_config("phd_swa", 3, 4), tokens)
    assert max_diff(fwd(params, tiny_config("phd_cswa", 3, 4, 12), tokens), swa) <= 1e-6
    assert max_diff(fwd(params, tiny_config("phd_cswa", 3, 4, 50), tokens), swa) <= 1e-6
    assert max_diff(swa, phd) > 1e-3  # the window matters


def test_naive_equals_vanilla_on_the_literally_repeated_sequence():
    """naive-K with flat positions is, by definition, a plain LM over each token repeated K times."""
    cfg = tiny_config("naive", 3)
    params = phd_jax.init_params(cfg, 0)
    tokens = random_tokens(cfg, 2, 9)
    repeated = jnp.repeat(tokens, 3, axis=1)
    ref = fwd(params, tiny_config("vanilla", 1), repeated)[:, 2::3]
    assert max_diff(fwd(params, cfg, tokens), ref) <= 1e-5


@pytest.mark.parametrize("name", list(VARIANT_GRID))
def test_causality(name):
    """Changing tokens after position n never changes logits at positions <= n."""
    cfg = tiny_config(**VARIANT_GRID[name])
    params = phd_jax.init_params(cfg, 1)
    tokens = random_tokens(cfg, 1, 12, seed=3)
    base = fwd(params, cfg, tokens)
    for n in (0, 4, 7, 10):
        changed = tokens.at[:, n + 1 :].set((tokens[:, n + 1 :] + 7) % cfg.vocab_size)
        out = fwd(params, cfg, changed)
        assert max_diff(out[:, : n + 1], base[:, : n + 1]) == 0.0, f"position <= {n} saw the future"
        assert max_diff(out[:, n + 1 :], base[:, n + 1 :]) > 0.0


def test_phd_adds_no_parameters_and_repeat_changes_outputs():
    cfgs = [tiny_config("vanilla", 1), tiny_config("phd", 3), tiny_config("phd_cswa", 4, 5, 2)]
    shapes = [jax.tree.map(jnp.shape, phd_jax.init_params(c, 0)) for c in cfgs]
    assert shapes[0] == shapes[1] == shapes[2]
    params = phd_jax.init_params(cfgs[0], 0)
    tokens = random_tokens(cfgs[0], 1, 8)
    assert max_diff(fwd(params, cfgs[0], tokens), fwd(params, cfgs[1], tokens)) > 1e-3


def test_unembedding_runs_for_the_last_copy_only():
    cfg = tiny_config("phd", 4)
    params = phd_jax.init_params(cfg, 0)
    tokens = random_tokens(cfg, 2, 10)
    jaxpr = str(jax.make_jaxpr(lambda p, t: phd_jax.forward(p, cfg, t))(params, tokens))
    vocab_outputs = [
        line for line in jaxpr.splitlines() if "dot_general" in line and f",{cfg.vocab_size}]" in line.split("=")[0]
    ]
    assert vocab_outputs and all("[2,10,61]" in line for line in vocab_outputs), vocab_outputs


@pytest.mark.parametrize(
    "option", [dict(scan_layers=False), dict(remat="full"), dict(remat="dots"), dict(remat="full", scan_layers=False)]
)
def test_scan_and_remat_do_not_change_the_function(option):
    cfg = tiny_config("phd_swa", 3, 2)
    other = cfg.replace(**option)
    params = phd_jax.init_params(cfg, 0)
    if not other.scan_layers:  # the same weights, one subtree per layer
        layers = params["layers"]
        params_other = {k: v for k, v in params.items() if k != "layers"}
        for i in range(cfg.num_layers):
            params_other[f"layers_{i}"] = jax.tree.map(lambda x: x[i], layers)
        assert jax.tree.structure(params_other) == jax.tree.structure(phd_jax.init_params(other, 0))
    else:
        params_other = params
    tokens = random_tokens(cfg, 2, 10)
    logits, loss, grads = _logits_loss_grads(params, cfg, tokens)
    logits_o, loss_o, grads_o = _logits_loss_grads(params_other, other, tokens)
    assert max_diff(logits_o, logits) <= 1e-5 and abs(float(loss) - float(loss_o)) <= 1e-6
    if other.scan_layers:
        assert max_diff(grads_o, grads) <= 1e-5
    else:
        assert max_diff(grads_o["layers_1"], jax.tree.map(lambda x: x[1], grads["layers"])) <= 1e-5


def test_options_qk_norm_untied_flat_positions():
    for opt in (dict(qk_norm=True), dict(tie_embeddings=False), dict(position_mode="flat")):
        cfg = tiny_config("phd_cswa", 3, 2, 3, **opt)
        params = phd_jax.init_params(cfg, 0)
        tokens = random_tokens(cfg, 2, 7)
        out = fwd(params, cfg, tokens)
        assert out.shape == (2, 7, cfg.vocab_size) and np.isfinite(np.asarray(out)).all()
        assert max_diff(out, fwd(params, cfg.replace(attention="dense"), tokens)) <= 1e-5
    assert "unembed" in phd_jax.init_params(tiny_config(tie_embeddings=False), 0)
    assert "query_norm" in phd_jax.init_params(tiny_config(qk_norm=True), 0)["layers"]["attention"]


def test_bfloat16_compute_matches_float32_loosely():
    cfg = tiny_config("phd_swa", 3, 4)
    params = phd_jax.init_params(cfg, 0)
    tokens = random_tokens(cfg, 2, 16)
    ref = fwd(params, cfg, tokens)
    out = fwd(params, cfg.replace(dtype="bfloat16"), tokens)
    assert out.dtype == jnp.float32  # logits are always float32
    assert max_diff(out, ref) < 0.05
    assert float(jnp.mean(jnp.argmax(out, -1) == jnp.argmax(ref, -1))) >= 0.9
    bf_params = phd_jax.init_params(cfg.replace(param_dtype="bfloat16"), 0)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(bf_params))


def test_logical_axis_names():
    axes = phd_jax.param_logical_axes(tiny_config(tie_embeddings=False))
    assert tuple(axes["embed"]["embedding"]) == ("vocab", "embed")
    assert tuple(axes["unembed"]["kernel"]) == ("embed", "vocab")
    attn = axes["layers"]["attention"]
    assert tuple(attn["query"]["kernel"]) == ("layers", "embed", "heads", "head_dim")
    assert tuple(attn["key"]["kernel"]) == ("layers", "embed", "kv_heads", "head_dim")
    assert tuple(axes["layers"]["mlp"]["gate"]["kernel"]) == ("layers", "embed", "mlp")


@pytest.mark.parametrize(
    "tokens,message",
    [
        (np.array([[1, 2, 61]]), r"contains id 61, outside the allowed range \[0, vocab_size=61\)"),
        (np.array([[1, -1]]), r"contains id -1"),
        (np.array([1, 2, 3]), r"must have shape \[batch, length\]"),
        (np.zeros((1, 0), np.int32), r"with both >= 1, got shape \(1, 0\)"),
        (np.array([[1.0, 2.0]]), r"must be integer token ids"),
        (np.zeros((1, 65), np.int32), r"sequence length 65 exceeds ModelConfig.max_seq_len=64"),
    ],
)
def test_forward_rejects_bad_tokens(tokens, message):
    cfg = tiny_config()
    params = phd_jax.init_params(cfg, 0)
    with pytest.raises(ValueError, match=message):
        phd_jax.forward(params, cfg, jnp.asarray(tokens))


def test_transformer_mode_is_named_and_checked():
    from phd_jax.model import Transformer

    cfg = tiny_config(variant="phd", repeat=2)
    layout = Layout.for_config(cfg, 2, "kernel")
    args = (jnp.zeros((1, 2), jnp.int32), jnp.zeros((2,), jnp.int32), np.zeros((1,), np.int32))
    with pytest.raises(ValueError, match="mode='bogus' is invalid: allowed: full, extend"):
        Transformer(cfg, layout, mode="bogus").init(jax.random.key(0), *args)
    with pytest.raises(ValueError, match="mode='extend' .* pass cache= and mask="):
        Transformer(cfg, mode="extend").init(jax.random.key(0), *args)
    with pytest.raises(ValueError, match="mode='full' .* pass layout="):
        Transformer(cfg).init(jax.random.key(0), *args)


@pytest.mark.parametrize(
    "x_shape,w_shape,dims",
    [
        ((2, 5, 8), (8, 3, 4), (((2,), (0,)), ((), ()))),  # d -> (heads, head_dim)
        ((2, 5, 3, 4), (3, 4, 8), (((2, 3), (0, 1)), ((), ()))),  # (heads, head_dim) -> d
        ((2, 5, 8), (2, 8, 6), (((2,), (1,)), ((0,), (0,)))),  # batch dims: plain dot_general
    ],
)
def test_token_matmul_equals_dot_general(x_shape, w_shape, dims):
    """The projections' flattened dot equals `lax.dot_general`, value and gradients."""
    from phd_jax.model import token_matmul

    kx, kw, kc = jax.random.split(jax.random.key(0), 3)
    x, w = jax.random.normal(kx, x_shape), jax.random.normal(kw, w_shape)
    ct = jax.random.normal(kc, jax.lax.dot_general(x, w, dims).shape)

    def value_and_grads(dot):
        return jax.value_and_grad(lambda x, w: jnp.vdot(dot(x, w, dims), ct), argnums=(0, 1))(x, w)

    got, want = value_and_grads(token_matmul), value_and_grads(jax.lax.dot_general)
    assert max_diff(got, want) <= 1e-5
