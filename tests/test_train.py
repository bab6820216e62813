"""The trainer in-process on 8 fake devices: sharded meshes equal one device, parameters and
optimizer state sharded as the rules say, a checkpoint restores on another mesh, gradient
accumulation, and every bad input fails before any work with a message naming the key."""

import functools
import hashlib
import json
import os
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from phd_jax.configs import tiny  # noqa: E402
from phd_jax.errors import ConfigError  # noqa: E402
from phd_jax.train import TrainState, make_optimizer, train_and_evaluate, train_step, validate  # noqa: E402
from phd_jax.train import checkpoint as ckpt  # noqa: E402
from phd_jax.train import sharding as shd  # noqa: E402
from phd_jax.train.optimizer import learning_rate_schedule  # noqa: E402
from phd_jax.train.trainer import abstract_train_state, compute_grads, create_train_state  # noqa: E402

MESHES = [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 2, 4)]
STEPS = 4


def run_config(backend="blocksparse", mesh=(1, 1, 1), **kw):
    c = tiny.get_config()
    c.model.attention = backend
    if backend == "splash":
        c.model.block_q = c.model.block_kv = 128
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
    c.num_steps, c.log_every, c.eval_every, c.checkpoint_every = STEPS, 1, 1000, 2
    c.sample_tokens, c.compilation_cache = 0, ""
    for k, v in kw.items():
        c[k] = v
    return c


def losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f)}


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """Each (backend, mesh) trained STEPS steps once; shared by the tests below."""
    cache = {}

    def get(backend, mesh):
        if (backend, mesh) not in cache:
            wd = str(tmp_path_factory.mktemp(f"{backend}-{'x'.join(map(str, mesh))}"))
            devices = jax.devices()[: int(np.prod(mesh))]
            train_and_evaluate(run_config(backend, mesh), wd, progress=False, devices=devices)
            cache[backend, mesh] = wd
        return cache[backend, mesh]

    return get


@pytest.mark.parametrize("backend", ["blocksparse", "splash"])
@pytest.mark.parametrize("mesh", MESHES, ids=lambda m: "x".join(map(str, m)))
def test_sharded_losses_equal_one_device(runs, backend, mesh):
    ref, got = losses(runs(backend, (1, 1, 1))), losses(runs(backend, mesh))
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in ref:
        assert got[step] == pytest.approx(ref[step], rel=1e-5), (step, got[step], ref[step])
    assert ref[STEPS] < ref[1]


@pytest.mark.parametrize("mesh", [(1, 2, 4), (1, 8, 1)], ids=lambda m: "x".join(map(str, m)))
def test_params_and_opt_state_sharded_by_rules(runs, mesh):
    """The state the trainer creates, and the one it restores, is sharded as the default rules say:
    `embed` over fsdp, heads / kv_heads / mlp / vocab over tensor, layers replicated."""
    config = run_config("blocksparse", mesh)
    cfg = validate(config, 8)
    m = shd.make_mesh(config)
    opt = make_optimizer(config)
    state_sh, _ = shd.train_shardings(cfg, config, opt, m)
    created = create_train_state(config, cfg, opt, state_sh, m, log=lambda *a: None)
    mgr = ckpt.manager(runs("blocksparse", mesh), config)
    restored, _ = ckpt.restore(mgr, STEPS, abstract_train_state(cfg, opt, state_sh))
    mgr.close()
    expect = {
        ("layers", "attention", "query", "kernel"): (None, "fsdp", "tensor", None),
        ("layers", "attention", "key", "kernel"): (None, "fsdp", "tensor", None),
        ("layers", "attention", "out", "kernel"): (None, "tensor", None, "fsdp"),
        ("layers", "mlp", "down", "kernel"): (None, "tensor", "fsdp"),
        ("layers", "mlp_norm", "scale"): (None, "fsdp"),
        ("embed", "embedding"): ("tensor", "fsdp"),
    }
    f, t = m.shape["fsdp"], m.shape["tensor"]
    for state in (created, restored):
        mu = state.opt_state[1][0].mu  # chain(clip, adamw): adamw's ScaleByAdamState
        for path, spec in expect.items():
            for tree in (state.params, mu):
                leaf = functools.reduce(lambda d, k: d[k], path, tree)
                got = tuple(leaf.sharding.spec) + (None,) * (leaf.ndim - len(leaf.sharding.spec))
                assert got == spec, (path, got)
                local = leaf.addressable_shards[0].data.shape
                div = [{"fsdp": f, "tensor": t, None: 1}[a] for a in spec]
                assert local == tuple(n // d for n, d in zip(leaf.shape, div)), (path, local)


def test_fsdp8_checkpoint_resumes_on_one_device(runs, tmp_path):
    """Written with fsdp=8, restored onto 1 device: the next losses agree within 1e-5."""
    src = runs("blocksparse", (1, 8, 1))
    wd = str(tmp_path / "resumed")
    shutil.copytree(src, wd)
    shutil.rmtree(os.path.join(wd, "checkpoints", str(STEPS)))
    train_and_evaluate(run_config("blocksparse", (1, 1, 1)), wd, progress=False, devices=jax.devices()[:1])
    ref, got = losses(src), losses(wd)
    assert sorted(got) == list(range(1, STEPS + 1))  # resumed at 2: lines after 2 replaced, none twice
    for step in range(3, STEPS + 1):
        assert got[step] == pytest.approx(ref[step], rel=1e-5, abs=1e-6)


def test_grad_accumulation_equals_full_batch():
    """4 microbatches of 2 give the loss and gradients of one batch of 8 (1e-5), and the step's
    loss and gradient norm too."""
    config = run_config("blocksparse", (1, 1, 1))
    cfg = validate(config, 1)
    params = __import__("phd_jax").init_params(cfg, 0)
    batch = {"tokens": jax.random.randint(jax.random.key(1), (8, 33), 0, 259, dtype=jnp.int32)}
    grads = jax.jit(compute_grads, static_argnums=(2, 3))
    (l1, g1), (l4, g4) = grads(params, batch, cfg, 1), grads(params, batch, cfg, 4)
    assert float(l4) == pytest.approx(float(l1), rel=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g4)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5 * float(jnp.abs(a).max()))
    opt = make_optimizer(config)
    state = TrainState(step=jnp.int32(0), params=params, opt_state=opt.init(params), nonfinite=jnp.int32(0))
    step = jax.jit(
        functools.partial(
            train_step, cfg=cfg, optimizer=opt, schedule=learning_rate_schedule(config), grad_accum_steps=4
        )
    )
    _, m4 = step(state, batch)
    assert float(m4["loss"]) == pytest.approx(float(l1), rel=1e-5)
    assert float(m4["grad_norm"]) == pytest.approx(float(optax.tree.norm(g1)), rel=1e-5)


def test_weight_decay_reaches_kernels_only():
    """With zero gradients an AdamW step only decays: every kernel shrinks, while norm scales,
    the embedding and the Qwen2-style q/k/v biases are left exactly as they were."""
    config = run_config("blocksparse", (1, 1, 1))
    with config.ignore_type():
        config.model.qkv_bias = True
        config.model.qk_norm = "head"
        config.warmup_steps = 0
    cfg = validate(config, 1)
    params = __import__("phd_jax").init_params(cfg, 0)
    params = jax.tree.map(lambda x: x + 0.5, params)  # biases start at zero: make them visible
    opt = make_optimizer(config)
    updates, _ = opt.update(jax.tree.map(jnp.zeros_like, params), opt.init(params), params)
    new = optax.apply_updates(params, updates)
    changed = {}
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(new)):
        changed["/".join(str(getattr(k, "key", k)) for k in path)] = not np.array_equal(np.asarray(a), np.asarray(b))
    names = set(changed)
    assert any(n.endswith("bias") for n in names) and any("norm" in n for n in names)
    for name, did in changed.items():
        parts = name.split("/")
        frozen = parts[-1] == "bias" or any(p == "embed" or p.endswith("norm") for p in parts)
        assert did == (not frozen), name


def _snapshot(workdir):
    out = {}
    for root, _, files in os.walk(workdir):
        for name in files:
            path = os.path.join(root, name)
            out[os.path.relpath(path, workdir)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


def _set(c, key, value):
    *parents, last = key.split(".")
    for p in parents:
        c = c[p]
    with c.ignore_type():
        c[last] = value


BAD = [
    ("learnin_rate", 1e-3, "config.learnin_rate is not a config key (did you mean config.learning_rate?)"),
    ("model.d_modle", 64, "config.model.d_modle is not a config key (did you mean config.model.d_model?)"),
    ("batch_size", "8", "config.batch_size='8' is invalid: must be an integer"),
    ("model.dtype", "float64", "config.model.dtype='float64' is invalid"),
    ("mesh.data", 3, "config.mesh={'data': 3, 'fsdp': 1, 'tensor': 1} is invalid: data*fsdp*tensor=3"),
    ("mesh.fsdp", -1, "config.mesh.fsdp=-1 is invalid: only one mesh axis may be -1"),
    ("batch_size", 12, "config.batch_size=12 is invalid"),
    ("seq_len", 65, "config.seq_len=65 is invalid: exceeds config.model.max_seq_len=64"),
    ("sample_tokens", 60, "config.sample_tokens=60 is invalid"),
    ("model.window", 4, "set --config.model.window=0"),
    ("model.vocab_size", 200, "config.model.vocab_size=200 is invalid"),  # smaller than the tokenizer's 259
    ("model.d_model", 64, "config.model.d_model=64 does not match the run in workdir"),
    ("learning_rate", 1.0, "config.learning_rate=1.0 does not match the run in workdir"),
]


@pytest.mark.parametrize("key,value,message", BAD, ids=[b[0] + "=" + str(b[1]) for b in BAD])
def test_bad_input_fails_before_any_work(runs, key, value, message):
    wd = runs("blocksparse", (8, 1, 1))
    before = _snapshot(wd)
    c = run_config("blocksparse", (-1, 1, 1))
    if "." in key and key.split(".")[-1] not in c[key.split(".")[0]]:
        c[key.split(".")[0]][key.split(".")[-1]] = value  # an unknown key
    elif key not in c and "." not in key:
        c[key] = value
    else:
        _set(c, key, value)
    with pytest.raises(ConfigError) as e:
        train_and_evaluate(c, wd, progress=False)
    assert message in str(e.value)
    assert _snapshot(wd) == before


def test_indivisible_dimension_names_parameter_and_rule(tmp_path):
    c = run_config("blocksparse", (1, 2, 4))
    c.model.num_kv_heads = 2
    with pytest.raises(
        ConfigError,
        match=r"parameter layers/attention/key/kernel .*kv_heads=2.* not divisible "
        r"by mesh axes tensor of size 4 .*\('kv_heads', 'tensor'\)",
    ):
        train_and_evaluate(c, str(tmp_path / "w"), progress=False)
    assert not os.path.exists(tmp_path / "w")


def test_foreign_files_are_never_touched(tmp_path):
    wd = tmp_path / "w"
    wd.mkdir()
    (wd / "checkpoints").write_text("mine")
    with pytest.raises(ConfigError, match="holds 'checkpoints' but no config.json"):
        train_and_evaluate(run_config(mesh=(-1, 1, 1)), str(wd), progress=False)
    assert (wd / "checkpoints").read_text() == "mine" and sorted(os.listdir(wd)) == ["checkpoints"]


def test_nonfinite_loss_stops_without_a_checkpoint(tmp_path):
    """A learning rate of 1e30 makes step 2's loss non-finite: the run stops naming step 2 and
    writes no checkpoint; with skip_nonfinite the updates are skipped and counted instead."""
    from phd_jax.train import TrainingError

    wd = str(tmp_path / "nan")
    c = run_config(mesh=(1, 1, 1), learning_rate=1e30, warmup_steps=0)
    with pytest.raises(TrainingError, match="non-finite loss .* at step 2"):
        train_and_evaluate(c, wd, progress=False, devices=jax.devices()[:1])
    assert os.listdir(os.path.join(wd, "checkpoints")) == []
    c.skip_nonfinite = True
    out = train_and_evaluate(c, str(tmp_path / "skip"), progress=False, devices=jax.devices()[:1])
    assert out["skipped_steps"] == STEPS - 1


def test_init_from_a_workdir_starts_from_its_weights(runs, tmp_path, capsys):
    src = runs("blocksparse", (8, 1, 1))
    c = run_config(mesh=(1, 1, 1), init_from=src)
    wd = str(tmp_path / "w")
    train_and_evaluate(c, wd, progress=False, devices=jax.devices()[:1])
    assert f"initialised the weights from {src} (step {STEPS})" in capsys.readouterr().out
    fresh, started = losses(src), losses(wd)
    assert started[1] < fresh[1] - 0.5 and abs(started[1] - fresh[STEPS]) < 0.5


def test_init_from_another_model_is_refused_before_writing(runs, tmp_path):
    """The weights do not fit (another d_model): a one-line error naming the field, and the new
    workdir is not created, so the corrected command starts cleanly."""
    c = run_config(mesh=(1, 1, 1), init_from=runs("blocksparse", (8, 1, 1)))
    c.model.d_model = 64
    wd = tmp_path / "w"
    with pytest.raises(ConfigError, match=r"config.init_from=.* do not fit config.model: .*d_model \(config 64"):
        train_and_evaluate(c, str(wd), progress=False, devices=jax.devices()[:1])
    assert not wd.exists()


def test_which_changes_may_resume(tmp_path):
    """num_steps, mesh, backend and data locations may change; a key a newer version added, at its
    default, does not block a resume; the data source or the schedule may not change."""
    from phd_jax.train.config import to_json

    wd = str(tmp_path)
    saved = run_config()
    old = json.loads(to_json(saved))
    del old["data"]["cache_dir"]  # written by a version without this key
    old["weight_decay_exclude"] = "embed,*norm"  # <= 0.3.0's default: the same mask without biases
    with open(os.path.join(wd, "config.json"), "w") as f:
        json.dump(old, f)
    c = run_config(mesh=(2, 2, 2), num_steps=40)
    c.model.attention, c.data.data_dir = "splash", "/elsewhere"
    assert ckpt.check_workdir(wd, c)["num_steps"] == STEPS
    for key, value in (("data.source", "text:/tmp/*.txt"), ("schedule", "linear")):
        c = run_config()
        _set(c, key, value)
        with pytest.raises(ConfigError, match=f"config.{key}=.* does not match the run in workdir"):
            ckpt.check_workdir(wd, c)
    # with q/k/v biases the old patterns decayed them: the new default changes the run
    old["model"]["qkv_bias"] = True
    with open(os.path.join(wd, "config.json"), "w") as f:
        json.dump(old, f)
    c = run_config()
    c.model.qkv_bias = True
    with pytest.raises(ConfigError, match="config.weight_decay_exclude=.* does not match the run in workdir"):
        ckpt.check_workdir(wd, c)


def test_profile_of_two_steps_writes_a_trace_of_those_steps(tmp_path, capsys):
    """profile_steps=2,3 (the command line's spelling): a TensorBoard-layout xplane.pb and a Perfetto
    trace whose step annotations are exactly steps 2 and 3; a resume may change or drop it; a
    bad range is refused by name before anything is written."""
    import glob
    import gzip

    wd, one = str(tmp_path / "w"), jax.devices()[:1]
    train_and_evaluate(run_config(profile_steps="2,3"), wd, progress=False, devices=one)
    (run,) = glob.glob(os.path.join(wd, "profile", "plugins", "profile", "*"))
    (xplane,) = glob.glob(os.path.join(run, "*.xplane.pb"))
    assert os.path.getsize(xplane) > 0
    with gzip.open(os.path.join(run, "perfetto_trace.json.gz")) as f:
        events = json.load(f)["traceEvents"]
    assert sorted(int(e["args"]["step_num"]) for e in events if e.get("name") == "train") == [2, 3]
    assert f"profiled steps 2-3: trace in {ckpt.shown_path(run)}" in capsys.readouterr().out
    train_and_evaluate(run_config(num_steps=STEPS + 1, profile_steps=None), wd, progress=False, devices=one)
    assert sorted(losses(wd)) == list(range(1, STEPS + 2))  # resumed, with profile_steps changed
    bad = tmp_path / "bad"
    with pytest.raises(ConfigError, match=r"config.profile_steps='3,2' is invalid: START=3 is after END=2"):
        train_and_evaluate(run_config(profile_steps="3,2"), str(bad), progress=False, devices=one)
    assert not bad.exists()


def test_printed_paths_are_relative_to_where_the_user_stands(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert ckpt.shown_path(str(tmp_path / "runs" / "default")) == os.path.join("runs", "default")
    assert ckpt.shown_path("runs/default") == os.path.join("runs", "default")
    assert ckpt.shown_path(str(tmp_path)) == "."
    outside = os.path.dirname(str(tmp_path))
    assert ckpt.shown_path(outside) == outside  # not under the working directory: absolute
