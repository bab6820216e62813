"""Continuing a run with its full state (`init_from=WORKDIR/checkpoints/STEP`, `init_state="full"`):
continued as itself it equals the uninterrupted run bitwise; continued as PHD-2 it starts from the
checkpoint's optimizer state, step and data position and trains; any change beyond the PHD fields
is refused by name before the new workdir is written; a 0.1.0 workdir works as a source."""

import json
import os

import jax
import numpy as np
import pytest
from helpers import V010_WORKDIR, file_snapshot

from phd_jax.configs import tiny
from phd_jax.errors import ConfigError
from phd_jax.flops import train_flops_per_sequence
from phd_jax.train import checkpoint as ckpt
from phd_jax.train import make_optimizer, model_config, train_and_evaluate
from phd_jax.train import sharding as shd
from phd_jax.train.trainer import abstract_train_state, first_state

STEPS, AT = 8, 4  # the source trains STEPS steps; the continuations start at its step-AT checkpoint


def config(name="vanilla", **kw):
    c = tiny.get_config(name)
    c.mesh.data = 1
    c.num_steps, c.log_every, c.eval_every, c.checkpoint_every, c.keep_checkpoints = STEPS, 1, AT, AT, 5
    c.sample_tokens, c.compilation_cache = 0, ""
    for k, v in kw.items():
        c[k] = v
    return c


def train(c, workdir):
    return train_and_evaluate(c, str(workdir), progress=False, devices=jax.devices()[:1])


def records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r for r in map(json.loads, f)}


def restore(workdir, step, c):
    """The TrainState and data state of `workdir`'s checkpoint `step`, restored as config `c`'s."""
    cfg, opt = model_config(c), make_optimizer(c)
    state_sh, _ = shd.train_shardings(cfg, c, opt, shd.make_mesh(c, jax.devices()[:1]))
    mgr = ckpt.manager(workdir, read_only=True)
    try:
        return ckpt.restore(mgr, step, abstract_train_state(cfg, opt, state_sh))
    finally:
        mgr.close()


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The source (vanilla, STEPS steps, checkpoints every AT), and its continuations from step AT as
    vanilla (checkpoints every 2 here: a resumable key) and as PHD-2."""
    root = tmp_path_factory.mktemp("continue")
    source = root / "source"
    train(config(), source)
    step_dir = str(source / "checkpoints" / str(AT))
    out = {"source": str(source), "step_dir": step_dir, "logs": {}}
    for name, c in (
        ("vanilla", config(init_from=step_dir, init_state="full", checkpoint_every=2)),
        ("phd", config("PHD-2", init_from=step_dir, init_state="full")),
    ):
        before = file_snapshot(source)
        train(c, root / name)
        assert file_snapshot(source) == before  # the source is only read
        out[name] = str(root / name)
    return out


def test_continued_as_itself_equals_the_uninterrupted_run(runs):
    ref, got = records(runs["source"]), records(runs["vanilla"])
    assert sorted(got) == list(range(AT + 1, STEPS + 1))  # the steps after the checkpoint, no others
    for step, r in got.items():  # the same batches, learning rate and updates: every number equal
        for key in ("loss", "grad_norm", "learning_rate", "val_loss"):
            assert r.get(key) == ref[step].get(key), (step, key)
    c = config()
    state, data = restore(runs["vanilla"], STEPS, c)
    ref_state, ref_data = restore(runs["source"], STEPS, c)
    assert_trees_equal(state.to_tree(), ref_state.to_tree())  # params, optimizer state, step, counter
    assert data == ref_data
    with open(os.path.join(runs["vanilla"], "config.json")) as f:
        saved = json.load(f)
    assert (saved["init_from"], saved["init_state"]) == (runs["step_dir"], "full")


def test_phd_continuation_starts_from_the_checkpoint_state_and_trains(runs, capsys):
    c = config("PHD-2", init_from=runs["step_dir"], init_state="full")
    cfg, opt = model_config(c), make_optimizer(c)
    assert (cfg.variant, cfg.repeat) == ("phd", 2)
    state_sh, _ = shd.train_shardings(cfg, c, opt, shd.make_mesh(c, jax.devices()[:1]))
    state, (data, info), recorded = first_state(c, cfg, opt, state_sh, None)
    line = capsys.readouterr().out.strip()
    assert line.startswith("continuing ") and f"(step {AT}," in line
    assert "model.variant 'vanilla' -> 'phd', model.repeat 1 -> 2" in line
    ref_state, ref_data = restore(runs["source"], AT, config())  # read as the vanilla run it is
    assert int(state.step) == AT
    assert_trees_equal(state.to_tree(), ref_state.to_tree())
    assert data == ref_data and recorded.init_from == runs["step_dir"]
    assert (info["step"], info["model"]) == (AT, "vanilla")

    ref, got = records(runs["source"]), records(runs["phd"])
    assert sorted(got) == list(range(AT + 1, STEPS + 1))
    for step, r in got.items():  # the schedule goes on; the model (and so the loss) is another one
        assert r["learning_rate"] == ref[step]["learning_rate"]
        assert np.isfinite(r["loss"]) and r["loss"] != ref[step]["loss"]
    assert got[STEPS]["loss"] < ref[AT]["loss"] + 0.5  # it started from the trained weights
    # FLOPs spent by each step: the source's AT vanilla steps, then PHD-2's
    phd_step = c.batch_size * train_flops_per_sequence(cfg, c.seq_len)
    assert phd_step > 1.5 * ref[1]["flops"]
    for step in got:
        assert got[step]["flops"] == pytest.approx(ref[AT]["flops"] + (step - AT) * phd_step, rel=1e-12)
    with open(os.path.join(runs["phd"], "model_config.json")) as f:
        assert json.load(f)["repeat"] == 2
    final, _ = restore(runs["phd"], STEPS, c)
    assert int(final.step) == STEPS


def test_a_continued_run_resumes_from_its_own_checkpoints(runs, tmp_path, capsys):
    """Its latest checkpoint removed, the continued workdir resumes from its step 6, not from the
    source: init_from / init_state are ignored on a resume."""
    import shutil

    wd = tmp_path / "resumed"
    shutil.copytree(runs["vanilla"], wd)
    shutil.rmtree(wd / "checkpoints" / str(STEPS))
    train(config(init_from=runs["step_dir"], init_state="full", checkpoint_every=2), wd)
    out = capsys.readouterr().out
    assert "resuming from step 6" in out and "continuing" not in out
    ref = records(runs["source"])
    assert [records(wd)[s]["loss"] for s in range(7, STEPS + 1)] == [ref[s]["loss"] for s in range(7, STEPS + 1)]


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(learning_rate=3e-3), "config.learning_rate"),
        (dict(batch_size=4), "config.batch_size"),
        (dict(seq_len=16), "config.seq_len"),
        (dict(seed=1), "config.seed"),
        (dict(model=dict(d_model=64)), "config.model.d_model"),
        (dict(data=dict(shuffle=False)), "config.data.shuffle"),
    ],
    ids=lambda x: x if isinstance(x, str) else None,
)
def test_a_change_beyond_the_phd_fields_is_refused_by_name(runs, tmp_path, change, field):
    c = config("PHD-2", init_from=runs["step_dir"], init_state="full")
    for key, value in change.items():
        if isinstance(value, dict):
            for k, v in value.items():
                c[key][k] = v
        else:
            c[key] = value
    before = file_snapshot(runs["source"])
    wd = tmp_path / "w"
    with pytest.raises(ConfigError, match=rf"^{field}=.* differs from the run continued by config.init_state='full'"):
        train(c, wd)
    assert not wd.exists() and file_snapshot(runs["source"]) == before


@pytest.mark.parametrize(
    "init_from, message",
    [
        ("", r"config.init_state='full' is invalid with config.init_from=''"),
        ("hf:/x", r"config.init_state='full' is invalid with config.init_from='hf:/x'"),
        ("STEP_DIR/../6", r"config.init_from=.* is invalid: no complete checkpoint at step 6"),
    ],
)
def test_a_bad_source_is_refused_before_writing(runs, tmp_path, init_from, message):
    c = config(init_from=init_from.replace("STEP_DIR", runs["step_dir"]), init_state="full")
    wd = tmp_path / "w"
    with pytest.raises(ConfigError, match=message):
        train(c, wd)
    assert not wd.exists()


def test_a_0_1_0_workdir_is_a_source(tmp_path):
    """The 0.1.0 PHD-2 run continued from its step 2 as PHD-2 reproduces its own step-4 loss."""
    import shutil

    src = tmp_path / "v010"
    shutil.copytree(V010_WORKDIR, src)
    c = config("PHD-2", init_from=str(src / "checkpoints" / "2"), init_state="full", num_steps=4, eval_every=4)
    c.checkpoint_every, c.keep_checkpoints, c.log_every = 2, 2, 2
    train(c, tmp_path / "w")
    got, ref = records(tmp_path / "w"), records(src)
    assert sorted(got) == [4]
    assert got[4]["loss"] == pytest.approx(ref[4]["loss"], rel=2e-5)
    assert got[4]["learning_rate"] == pytest.approx(ref[4]["learning_rate"], rel=1e-6)
