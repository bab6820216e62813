"""The reproduction studies (experiments/): a tiny sweep end to end, its report, resuming.

One session fixture trains two variants of the tiny config for 3 steps (one seed) through
the study command; the other tests read those runs, copy them, or only plan.
"""

import json
import math
import os
import re
import shutil

import pytest

from experiments import cli, report
from experiments.studies import ALL, FLOP_KS, PILOT, STUDIES, WHEN_PAYS, Claim
from experiments.sweep import (
    REPO,
    RESULT_FILES,
    Setting,
    execute,
    is_finished,
    load_config_module,
    matched_depth,
    plan,
    run_state,
)
from phd_jax.errors import ConfigError
from phd_jax.flops import train_flops_per_sequence
from phd_jax.train import model_config
from phd_jax.train.checkpoint import RESUMABLE_CHANGES, first_change
from phd_jax.train.continuation import MAY_CHANGE
from phd_jax.train.metrics import read_metrics

TINY = os.path.join(REPO, "phd_jax", "configs", "tiny.py")
STEPS = 3
ARGS = [
    f"--config={TINY}",
    "--only=vanilla,PHD-2",
    "--seeds=0",
    f"--steps={STEPS}",
    "--config.eval_batches=1",
    "--results=",  # never the repository's experiments/results (a later --results wins)
]


def files_of(root):
    """{relative path: bytes} of every metrics.jsonl and the checkpoint steps under root."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if os.path.basename(dirpath) == "checkpoints":
            out[rel] = sorted(dirs)
        for f in files:
            if f == "metrics.jsonl":
                with open(os.path.join(dirpath, f), "rb") as fh:
                    out[os.path.join(rel, f)] = fh.read()
    return out


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("repro") / "runs")
    rc = cli.main("loss_vs_k", ARGS + [f"--root={root}"])
    return root, rc


def test_sweep_trains_each_variant_in_its_own_workdir(sweep):
    root, rc = sweep
    assert rc == 0
    for name, variant in (("vanilla", "vanilla"), ("PHD-2", "phd")):
        wd = os.path.join(root, name, "seed0")
        assert is_finished(wd, STEPS)
        with open(os.path.join(wd, "config.json")) as f:
            cfg = json.load(f)
        assert (cfg["model"]["variant"], cfg["num_steps"], cfg["seed"], cfg["eval_batches"]) == (variant, STEPS, 0, 1)
        assert [r["step"] for r in read_metrics(wd)][-1] == STEPS


def test_report_numbers_equal_the_runs_metrics(sweep, tmp_path):
    root, _ = sweep
    out = str(tmp_path / "docs" / "repro.md")
    text = report.write(root, out, ["loss_vs_k"])
    rows = {}
    for line in text.splitlines():
        m = re.match(r"\| (\S+) \| (\d+) \| (\d+) \| ([\d.]+) ± (\S+) \| (\S+) \|.*\| (s0: [\d.]+) \|$", line)
        if m:
            rows[m.group(1)] = m
    assert set(rows) == {"vanilla", "PHD-2"}
    finals = {n: read_metrics(os.path.join(root, n, "seed0"))[-1]["val_loss"] for n in rows}
    for name, m in rows.items():
        assert int(m.group(3)) == 1  # n seeds
        assert float(m.group(4)) == pytest.approx(finals[name], abs=5e-5)
        assert m.group(7) == f"s0: {finals[name]:.4f}"
    assert float(rows["PHD-2"].group(6)) == pytest.approx(finals["PHD-2"] - finals["vanilla"], abs=1e-4)
    one_seed = "not detected: 1 seed, so no σ and no minimum detectable effect"
    assert f"| PHD-2 (no window) beats vanilla | PHD-2 | vanilla | **{one_seed}** |" in text
    assert "**not run** | no finished runs of PHD-4" in text
    for axis in ("tokens", "flops"):
        png = tmp_path / "docs" / "repro" / f"loss_vs_k_{axis}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"](repro/loss_vs_k_{axis}.png)" in text


def test_report_replaces_only_the_results_section(sweep, tmp_path):
    root, _ = sweep
    out = tmp_path / "page.md"
    out.write_text(f"# Hand-written\nkeep me\n{report.BEGIN}\nold results\n{report.END}\nkeep me too\n")
    report.write(root, str(out), ["loss_vs_k"])
    text = out.read_text()
    assert text.startswith("# Hand-written\nkeep me\n") and text.endswith(f"{report.END}\nkeep me too\n")
    assert "old results" not in text and "| vanilla | 2 | 1 |" in text


def test_report_summary_in_the_readme_is_generated(sweep, tmp_path, capsys):
    root, _ = sweep
    readme = tmp_path / "README.md"
    readme.write_text(f"# Project\n{report.SUMMARY_BEGIN}\nold\n{report.SUMMARY_END}\nrest\n")
    out = str(tmp_path / "docs" / "repro.md")
    assert report.main([f"--root={root}", f"--out={out}", "--studies=loss_vs_k", f"--summary={readme}"]) == 0
    text = readme.read_text()
    assert text.startswith("# Project\n") and text.endswith(f"{report.SUMMARY_END}\nrest\n") and "old" not in text
    finals = {n: read_metrics(os.path.join(root, n, "seed0"))[-1]["val_loss"] for n in ("vanilla", "PHD-2")}
    row = next(line for line in text.splitlines() if "| PHD-2 (no window) beats vanilla |" in line)
    one_seed = "not detected: 1 seed, so no σ and no minimum detectable effect"
    assert f"| {finals['PHD-2'] - finals['vanilla']:+.4f} | – | 1 | **{one_seed}** |" in row
    assert "](docs/repro/loss_vs_k_tokens.png)" in text and (tmp_path / "docs/repro/loss_vs_k_tokens.png").exists()
    plain = tmp_path / "plain.md"
    plain.write_text("no markers\n")
    assert report.main([f"--root={root}", f"--out={out}", f"--summary={plain}"]) == 2
    assert "--summary=" in capsys.readouterr().err and plain.read_text() == "no markers\n"


def test_rerun_skips_finished_runs(sweep, capsys):
    root, _ = sweep
    before = files_of(root)
    capsys.readouterr()
    assert cli.main("loss_vs_k", ARGS + [f"--root={root}"]) == 0
    out = capsys.readouterr().out
    assert "2 runs (2 finished)" in out and "0 trained, 2 already finished" in out
    assert files_of(root) == before


def test_interrupted_run_resumes_from_its_checkpoint(sweep, tmp_path, capsys):
    root, _ = sweep
    src = os.path.join(root, "vanilla", "seed0")
    new_root = str(tmp_path / "runs")
    wd = os.path.join(new_root, "vanilla", "seed0")
    shutil.copytree(src, wd)
    # as if killed after step 2's checkpoint: no step-3 checkpoint, metrics end at step 2
    shutil.rmtree(os.path.join(wd, "checkpoints", str(STEPS)))
    with open(os.path.join(wd, "metrics.jsonl")) as f:
        lines = [ln for ln in f if json.loads(ln)["step"] < STEPS]
    with open(os.path.join(wd, "metrics.jsonl"), "w") as f:
        f.writelines(lines)
    assert not is_finished(wd, STEPS)
    capsys.readouterr()
    results = str(tmp_path / "results")
    args = ARGS[:1] + ["--only=vanilla"] + ARGS[2:] + [f"--root={new_root}", f"--results={results}"]
    assert cli.main("loss_vs_k", args) == 0
    out = capsys.readouterr().out
    assert "partial" in out and f"resuming from step {STEPS - 1}" in out
    kept = os.path.join(results, "loss_vs_k", "vanilla", "seed0")  # copied once it finished
    assert f"results -> {kept}" in out and read_metrics(kept) == read_metrics(wd)
    assert not os.path.exists(os.path.join(kept, "checkpoints"))
    resumed, original = read_metrics(wd), read_metrics(src)
    assert [r["step"] for r in resumed] == [r["step"] for r in original]
    assert resumed[-1]["val_loss"] == pytest.approx(original[-1]["val_loss"], abs=1e-5)


def test_results_are_kept_and_a_fresh_machine_skips_their_runs(sweep, tmp_path, capsys):
    root, _ = sweep
    results = str(tmp_path / "results")
    new_root = str(tmp_path / "runs")
    shutil.copytree(root, new_root)
    capsys.readouterr()
    # finished workdirs from before --results: their results are kept now, nothing trains
    assert cli.main("loss_vs_k", ARGS + [f"--root={new_root}", f"--results={results}"]) == 0
    assert "0 trained, 2 already finished" in capsys.readouterr().out
    for name in ("vanilla", "PHD-2"):
        kept = os.path.join(results, "loss_vs_k", name, "seed0")
        assert sorted(os.listdir(kept)) == sorted(
            f for f in RESULT_FILES if os.path.isfile(os.path.join(root, name, "seed0", f))
        )
        assert read_metrics(kept) == read_metrics(os.path.join(root, name, "seed0"))
    # a fresh machine (no workdirs) with the results: every run is skipped, no workdir made
    fresh = str(tmp_path / "fresh")
    assert cli.main("loss_vs_k", ARGS + [f"--root={fresh}", f"--results={results}"]) == 0
    out = capsys.readouterr().out
    assert "2 runs (2 finished)" in out and out.count(" saved ") == 2 and "0 trained" in out
    assert not os.path.exists(fresh)
    # the report reads the results directory like a root of workdirs
    text = report.write(os.path.join(results, "loss_vs_k"), str(tmp_path / "r.md"), ["loss_vs_k"], skip_missing=True)
    assert f"s0: {read_metrics(os.path.join(root, 'PHD-2', 'seed0'))[-1]['val_loss']:.4f}" in text
    # results cut off (metrics short of num_steps) do not count: the run trains again
    kept = os.path.join(results, "loss_vs_k", "vanilla", "seed0", "metrics.jsonl")
    with open(kept) as f:
        lines = [ln for ln in f if json.loads(ln)["step"] < STEPS]
    with open(kept, "w") as f:
        f.writelines(lines)
    (run,) = plan(
        [Setting("vanilla", "vanilla")],
        [0],
        STEPS,
        fresh,
        TINY,
        {"eval_batches": 1},
        results_root=os.path.join(results, "loss_vs_k"),
    )
    assert run_state(run) == "new"


def test_pilot_dry_run_lists_its_runs_in_order(tmp_path, capsys):
    root, results = str(tmp_path / "none"), str(tmp_path / "res")
    assert cli.main("pilot", ["--dry-run", f"--root={root}", f"--results={results}"]) == 0
    out = capsys.readouterr().out
    labels = re.findall(r"^  (d256-\S+ seed\d)\s", out, re.M)
    seed_major = [f"d256-{n}steps-{m} seed{s}" for n in (600,) for s in range(3) for m in ("vanilla", "PHD-2")]
    lr = [f"d256-600steps-{m}-lr{x}x seed0" for x in ("0.5", "2", "0.25", "0.125") for m in ("vanilla", "PHD-2")]
    assert labels == seed_major + lr
    assert "14 runs (0 finished)" in out and out.count(" new ") == 14
    assert not os.path.exists(root) and not os.path.exists(results)
    runs = plan(list(PILOT.settings), [0, 1], PILOT.steps, root, defaults=dict(PILOT.defaults), evals=PILOT.evals)
    by = {r.label: r.config for r in runs}
    c = by["d256-600steps-PHD-2 seed1"]
    assert (c.model.d_model, c.model.head_dim, c.model.mlp_dim, c.model.num_layers) == (256, 64, 768, 4)
    assert (c.num_steps, c.eval_every, c.keep_checkpoints, c.model.repeat, c.seed) == (600, 30, 1, 2, 1)
    assert by["d256-600steps-PHD-2-lr0.25x seed0"].learning_rate == pytest.approx(7.5e-4)
    assert by["d256-600steps-vanilla-lr2x seed0"].learning_rate == pytest.approx(6e-3)
    assert by["d256-600steps-vanilla seed0"].eval_every == 30
    assert "d256-600steps-vanilla-lr2x seed1" not in by  # the learning-rate check is seed 0 only


def test_when_pays_plan_matches_tokens_and_flops(tmp_path):
    root = str(tmp_path / "none")
    runs = plan(list(WHEN_PAYS.settings), [0], WHEN_PAYS.steps, root, defaults=dict(WHEN_PAYS.defaults), evals=20)
    by = {r.label.split()[0]: r.config for r in runs}
    for c in by.values():  # the pilot's model at its best learning rate; vanilla keeps its midpoint
        assert (c.model.d_model, c.model.head_dim, c.model.mlp_dim) == (256, 64, 768)
        assert c.learning_rate == pytest.approx(1.5e-3) and c.keep_checkpoints == 4
    v = by["vanilla"]  # every checkpoint of a 600-step run is kept, the midpoint (300) among them
    assert v.num_steps == 600 and 300 % v.checkpoint_every == 0 and v.num_steps // v.checkpoint_every <= 4
    assert by["vanilla-x2tokens"].num_steps == 1200 and by["vanilla-x2tokens"].model.repeat == 1
    deep, phd2 = by["vanilla-depth-PHD-2"], by["PHD-2"]
    assert deep.model.num_layers == 2 * phd2.model.num_layers and deep.model.repeat == 1
    assert (phd2.model.repeat, by["PHD-3"].model.repeat) == (2, 3)
    assert (by["PHD-CSWA-2-16-32"].model.window, by["PHD-CSWA-2-16-32"].model.chunk) == (16, 32)
    assert {c.b for c in WHEN_PAYS.claims} <= set(by) and {c.a for c in WHEN_PAYS.claims} <= set(by)
    # vanilla-then-PHD-2: vanilla's step-300 checkpoint continued with its full state as PHD-2, after
    # every vanilla run; its config differs from vanilla's only where a continuation may differ
    cont = by["vanilla-then-PHD-2"]
    assert (cont.init_state, cont.num_steps, cont.model.variant, cont.model.repeat) == ("full", 600, "phd", 2)
    assert cont.init_from == os.path.join(os.path.abspath(root), "vanilla", "seed0", "checkpoints", "300")
    assert first_change(v.to_dict(), cont, MAY_CHANGE) is None
    assert first_change(v.to_dict(), cont, RESUMABLE_CHANGES)[0] == "model.repeat"
    labels = [r.label for r in plan(list(WHEN_PAYS.settings), [0, 1, 2], 600, root, defaults=dict(WHEN_PAYS.defaults))]
    assert min(i for i, x in enumerate(labels) if x.startswith("vanilla-then")) > labels.index("vanilla seed2")
    # its FLOPs: 300 vanilla steps and 300 PHD-2 steps, about 1.5x vanilla's (what the claim says)
    flops = {n: train_flops_per_sequence(model_config(by[n]), 128) for n in ("vanilla", "PHD-2")}
    assert (flops["vanilla"] + flops["PHD-2"]) / 2 / flops["vanilla"] == pytest.approx(1.5, abs=0.05)
    (claim,) = [c for c in WHEN_PAYS.claims if (c.a, c.b) == ("vanilla-then-PHD-2", "vanilla-x2tokens")]
    assert claim.kind == "which" and "1.5x vanilla's training FLOPs" in claim.text
    assert [c.kind for c in WHEN_PAYS.claims if (c.a, c.b) == ("vanilla-then-PHD-2", "vanilla")] == ["lower"]


CALIBRATION = {"flops_per_s": 1e9, "overhead_s": 1.0, "description": "a test's"}
CONT_STEPS = 4  # tiny: checkpoints at 1..4, the last 3 kept; the continuation starts at step 2


def _continuation_plan(root, results=None, **kw):
    kw = {"group": 1, "continue_from": "vanilla", **kw}
    settings = [Setting("vanilla", "vanilla"), Setting("vanilla-then-PHD-2", "PHD-2", **kw)]
    return plan(settings, [0], CONT_STEPS, root, TINY, {"eval_batches": 1}, results_root=results)


def test_sweep_runs_a_continuation_after_its_source(tmp_path):
    """In process: vanilla, then vanilla-then-PHD-2 from its step-2 checkpoint (full state); on a
    fresh machine with only the saved results nothing trains; without the continuation's results
    the source is trained again into the root (its saved results untouched) and the continuation
    reproduces its first result; a missing checkpoint that cannot be retrained fails in one line."""
    results = str(tmp_path / "results")
    runs = _continuation_plan(str(tmp_path / "a"), results)
    out = execute(runs, CALIBRATION, progress=False, log=lambda *a: None)
    assert out["trained"] == ["vanilla seed0", "vanilla-then-PHD-2 seed0"] and not out["failed"]
    src, cont = (read_metrics(r.workdir) for r in runs)
    assert [r["step"] for r in cont] == [3, 4]  # the steps after the checkpoint
    assert [r["learning_rate"] for r in cont] == [r["learning_rate"] for r in src[2:]]  # the schedule goes on
    assert [r["loss"] for r in cont] != [r["loss"] for r in src[2:]]  # as another model
    with open(os.path.join(runs[1].workdir, "config.json")) as f:
        assert json.load(f)["init_from"] == os.path.join(runs[0].workdir, "checkpoints", "2")

    fresh = _continuation_plan(str(tmp_path / "fresh"), results)
    assert execute(fresh, CALIBRATION, progress=False, log=lambda *a: None)["trained"] == []
    assert not os.path.exists(str(tmp_path / "fresh"))
    shutil.rmtree(fresh[1].results_dir)
    saved_source = files_of(fresh[0].results_dir)
    lines = []
    out = execute(fresh, CALIBRATION, progress=False, log=lines.append)
    assert out["trained"] == ["vanilla-then-PHD-2 seed0"] and not out["failed"]
    assert any("trained again into" in line and "vanilla seed0" in line for line in lines)
    assert files_of(fresh[0].results_dir) == saved_source
    assert [r["loss"] for r in read_metrics(fresh[1].workdir)] == [r["loss"] for r in cont]

    broken = _continuation_plan(str(tmp_path / "broken"))
    shutil.copytree(runs[0].workdir, broken[0].workdir)
    shutil.rmtree(os.path.join(broken[0].workdir, "checkpoints", "2"))
    out = execute(broken, CALIBRATION, progress=False, log=lambda *a: None)
    ((label, message),) = out["failed"]
    assert label == "vanilla-then-PHD-2 seed0" and "missing: rerun vanilla seed0 into" in message
    assert not os.path.exists(broken[1].workdir)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(continue_at=0.3), r"continue_at=0.3 is invalid: step 1.2 of vanilla's 4 is not one of its checkpoints"),
        (dict(continue_at=0.25), r"vanilla keeps only its last 3 checkpoints \(2, 3, 4\), not step 1"),
        (dict(group=0), r"the source's group \(0\) must come before 0"),
        (dict(continue_from="PHD-9"), r"continue_from='PHD-9' is not a setting of this sweep"),
    ],
)
def test_a_continuation_that_cannot_run_is_refused_when_planning(tmp_path, kw, match):
    with pytest.raises(ConfigError, match=match):
        _continuation_plan(str(tmp_path / "none"), **kw)


def test_another_step_count_in_the_same_root_is_refused(sweep, capsys):
    root, _ = sweep
    before = files_of(root)
    args = [a for a in ARGS if not a.startswith("--steps")] + ["--steps=5", f"--root={root}"]
    assert cli.main("loss_vs_k", args) == 2
    err = capsys.readouterr().err
    assert "num_steps=3" in err and "num_steps=5" in err and "another --root" in err
    assert files_of(root) == before


def test_dry_run_prints_the_grid_and_trains_nothing(tmp_path, capsys):
    root = str(tmp_path / "none")
    assert cli.main("all", ["--dry-run", "--seeds=0-2", f"--root={root}"]) == 0
    out = capsys.readouterr().out
    n = len(ALL.settings) * 3
    assert f"{n} runs (0 finished), estimated " in out
    k = max(FLOP_KS)  # vanilla on K x the tokens trains K x the default steps
    assert f"vanilla-x{k}tokens seed2" in out and f"{k * cli.DEFAULT_STEPS} steps" in out
    assert out.count(" new ") == n
    assert not os.path.exists(root)


def test_settings_are_shared_between_studies():
    names = [s.name for s in ALL.settings]
    assert len(names) == len(set(names))
    for study in STUDIES.values():
        assert {s.name for s in study.settings} <= set(names)
        for c in study.claims:
            assert {c.a, c.b} <= {s.name for s in study.settings}


def test_vanilla_depth_matches_phd_flops_per_token():
    from phd_jax.flops import train_flops_per_sequence
    from phd_jax.train import model_config

    module = load_config_module(os.path.join(REPO, "phd_jax", "configs", "repro.py"))
    for k in (2, 3, 4):
        setting = Setting(name=f"vanilla-depth-PHD-{k}", model="vanilla", match_flops_of=f"PHD-{k}")
        layers, got, target = matched_depth(module, setting, {}, 10)
        (run,) = plan([setting], [0], 10, "/unused", overrides=[])
        assert run.config.model.num_layers == layers
        assert got == train_flops_per_sequence(model_config(run.config), 128)
        per_layer = got / layers
        assert abs(got - target) <= per_layer / 2  # the nearest depth
        assert abs(got / target - 1) < 0.1


def test_overrides_reach_every_run_and_bad_ones_name_the_key():
    runs = plan(
        STUDIES["window_chunk"].settings,
        [0, 1],
        10,
        "/r",
        TINY,
        ["--config.model.d_model=48", "--config.learning_rate=0.002"],
    )
    assert {(r.config.model.d_model, r.config.learning_rate) for r in runs} == {(48, 0.002)}
    assert {r.config.seed for r in runs} == {0, 1}
    assert runs[0].workdir == os.path.join("/r", "vanilla", "seed0")
    with pytest.raises(ConfigError, match=r"--config.model.d_modle.*not a config key"):
        plan([Setting("vanilla", "vanilla")], [0], 10, "/r", TINY, ["--config.model.d_modle=48"])
    with pytest.raises(ConfigError, match=r"--config.num_steps.*use --steps"):
        plan([Setting("vanilla", "vanilla")], [0], 10, "/r", TINY, ["--config.num_steps=48"])
    with pytest.raises(ConfigError, match="--seeds"):
        cli.parse_seeds("a,b")
    assert cli.parse_seeds("0-2") == [0, 1, 2] and cli.parse_seeds("4,7") == [4, 7]


def _result(name, values):
    return report.SettingResult(name, dict(enumerate(values)), {}, None, None, None, [])


@pytest.mark.parametrize(
    "a, b, kind, expected",
    [
        ([1.00, 1.01, 1.02], [1.10, 1.11, 1.12], "lower", "reproduced"),
        ([1.10, 1.11, 1.12], [1.00, 1.01, 1.02], "lower", "contradicted"),
        # paired differences -0.03, +0.05, -0.04: σ = 0.0493, so 2σ = 0.0987 is what could have counted
        (
            [1.00, 1.05, 1.01],
            [1.03, 1.00, 1.05],
            "lower",
            "not detected: the minimum detectable effect here is 2σ = 0.0987",
        ),
        ([1.00], [1.10], "lower", "not detected: 1 seed, so no σ and no minimum detectable effect"),
        ([1.00, 1.01, 1.02], [1.10, 1.11, 1.12], "which", "A lower"),
        (
            [1.00, 1.05, 1.01],
            [1.03, 1.00, 1.05],
            "which",
            "not detected: the minimum detectable effect here is 2σ = 0.0987",
        ),
        ([1.0001, 1.0101, 1.0201], [1.0, 1.01, 1.02], "same", "reproduced"),  # vanilla 1.5: gain 0.49
        ([1.30, 1.31, 1.32], [1.0, 1.01, 1.02], "same", "contradicted"),
    ],
)
def test_verdict_rule(a, b, kind, expected):
    results = {"A": _result("A", a), "B": _result("B", b), "vanilla": _result("vanilla", [1.5, 1.5, 1.5])}
    verdict, numbers = report.verdict(Claim(kind, "A", "B", "claim"), results)
    assert verdict == expected
    delta = sum(a) / len(a) - sum(b) / len(b)
    assert f"Δ = {delta:+.4f}" in numbers
    if len(a) > 1:
        d = [x - y for x, y in zip(a, b)]
        mean = sum(d) / len(d)
        sigma = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1))
        assert f"σ = {sigma:.4f}" in numbers


def test_report_can_leave_out_settings_without_runs(sweep, tmp_path):
    root, _ = sweep
    text = report.write(root, str(tmp_path / "partial.md"), ["loss_vs_k"], skip_missing=True)
    assert "not run" not in text and "| PHD-4 |" not in text
    assert "| vanilla | 2 | 1 |" in text and "| PHD-2 (no window) beats vanilla |" in text


@pytest.mark.parametrize("steps", [1, 3, 7, 60, 250, 1000, 12345])
def test_every_evaluation_falls_on_a_logged_step(steps):
    from experiments.sweep import schedule_for

    s = schedule_for(steps)
    assert s["eval_every"] % s["log_every"] == 0 and 1 <= s["eval_every"] <= max(1, steps)
    assert 8 <= steps // s["eval_every"] <= 12 or steps < 40  # about 10 evaluations a run
    assert 1 <= s["warmup_steps"] <= steps and 1 <= s["checkpoint_every"] <= steps
