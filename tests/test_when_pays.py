"""The main study (experiments.when_pays) end to end at a tiny size: its sweep, the K' step
(experiments.kprime) on the trained PHD checkpoint, and the report's every table and plot
(verdicts with minimum detectable effects, Δ curves, K' table and plot, continuation table).

One module fixture trains vanilla, PHD-2 and vanilla-x2tokens of the tiny config (2 steps, one
seed) through the study command and measures K' = 1 .. 3 of PHD-2; the tests read those files.
"""

import json
import os
import re
import shutil

import numpy as np
import pytest

from experiments import cli, kprime, report, sections
from experiments.curves import delta_curve, describe, zero_crossings
from experiments.studies import CONTINUATION, LOSS_VS_K
from experiments.sweep import REPO, RESULT_FILES, is_finished
from experiments.verdicts import collect
from phd_jax.train.metrics import read_metrics

TINY = os.path.join(REPO, "phd_jax", "configs", "tiny.py")
STEPS = 2
CONTINUED = CONTINUATION["when_pays"][0]  # vanilla-then-PHD-2: vanilla's step-1 checkpoint continued as PHD-2
ONLY = ("vanilla", "PHD-2", "vanilla-x2tokens", CONTINUED)
ARGS = [
    f"--config={TINY}",
    f"--only={','.join(ONLY)}",
    "--seeds=0",
    f"--steps={STEPS}",
    "--config.eval_batches=1",
    # the study's d_model-256 defaults, shrunk back to the tiny model (--config.* wins)
    "--config.model.d_model=32",
    "--config.model.head_dim=8",
    "--config.model.mlp_dim=64",
    "--config.checkpoint_every=1",  # vanilla's step-1 checkpoint: the continuation's source
]
DECODE = dict(extra=1, prompt=8, new_tokens=4, reps=1)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    base = tmp_path_factory.mktemp("when_pays")
    root, results = str(base / "runs"), str(base / "results")
    rc = cli.main("when_pays", ARGS + [f"--root={root}", f"--results={results}"])
    # K' of PHD-2 only (the continuation is a PHD-2 model too; measuring one keeps the test short)
    measured = kprime.run("when_pays", root, results, only=["PHD-2"], log=lambda _: None, **DECODE)
    return root, results, rc, measured


def _kept(results, name):
    return os.path.join(results, "when_pays", name, "seed0")


def test_sweep_trains_and_keeps_every_setting(study):
    root, results, rc, _ = study
    assert rc == 0
    for name in ONLY:
        wd = os.path.join(root, name, "seed0")
        steps = STEPS * (2 if name == "vanilla-x2tokens" else 1)
        assert is_finished(wd, steps)
        assert read_metrics(_kept(results, name)) == read_metrics(wd)
        assert set(os.listdir(_kept(results, name))) <= set(RESULT_FILES)
    with open(os.path.join(root, "PHD-2", "seed0", "config.json")) as f:
        cfg = json.load(f)
    assert (cfg["model"]["d_model"], cfg["model"]["repeat"], cfg["learning_rate"]) == (32, 2, pytest.approx(1.5e-3))


def test_kprime_measures_phd_runs_only_and_is_skipped_when_present(study):
    root, results, _, measured = study
    assert measured == {"measured": ["PHD-2 seed0"], "skipped": [], "missing": []}
    assert not os.path.exists(os.path.join(_kept(results, "vanilla"), kprime.KPRIME_FILE))
    data = kprime.load(_kept(results, "PHD-2"))
    assert data == kprime.load(os.path.join(root, "PHD-2", "seed0"))  # the workdir keeps it too
    rows = {r["repeat"]: r for r in data["kprime"]}
    assert sorted(rows) == [1, 2, 3] and data["trained_repeat"] == 2
    assert [rows[k]["model"] for k in (1, 2, 3)] == ["PHD-1", "PHD-2", "PHD-3"]
    # at the trained K it is the trainer's own final validation loss (same batches, same parameters)
    final = read_metrics(os.path.join(root, "PHD-2", "seed0"))[-1]["val_loss"]
    assert rows[2]["val_loss"] == pytest.approx(final, rel=1e-5)
    assert rows[1]["val_loss"] != pytest.approx(final, rel=1e-6)  # K' changed the computation
    assert rows[1]["speed_vs_k1"] == 1.0 and all(r["decode_tokens_per_s"] > 0 for r in rows.values())
    # rerun: nothing measured again, nothing rewritten
    before = open(os.path.join(_kept(results, "PHD-2"), kprime.KPRIME_FILE), "rb").read()
    again = kprime.run("when_pays", root, results, only=["PHD-2"], log=lambda _: None, **DECODE)
    assert again == {"measured": [], "skipped": ["PHD-2 seed0"], "missing": []}
    assert open(os.path.join(_kept(results, "PHD-2"), kprime.KPRIME_FILE), "rb").read() == before


def test_kprime_measured_before_the_results_were_kept_is_copied_not_remeasured(study, tmp_path):
    root, results, _, _ = study
    other = str(tmp_path / "results")  # a results directory without this run's results yet
    quiet = dict(only=["PHD-2"], log=lambda _: None, **DECODE)
    assert kprime.run("when_pays", root, other, **quiet)["measured"] == []  # the workdir has kprime.json
    dest = os.path.join(other, "when_pays", "PHD-2", "seed0")
    assert not os.path.exists(dest)
    shutil.copytree(_kept(results, "PHD-2"), dest)
    os.remove(os.path.join(dest, kprime.KPRIME_FILE))
    assert kprime.run("when_pays", root, other, **quiet) == {"measured": [], "skipped": ["PHD-2 seed0"], "missing": []}
    assert kprime.load(dest) == kprime.load(os.path.join(root, "PHD-2", "seed0"))


def test_kprime_command_line_refuses_bad_input(study, capsys):
    root, *_ = study
    assert kprime.main(["--study=nope", f"--root={root}"]) == 2
    assert "--study='nope' is invalid" in capsys.readouterr().err
    assert kprime.main(["--root=/no/such/dir"]) == 2
    assert "--root='/no/such/dir' is invalid" in capsys.readouterr().err
    assert kprime.main([f"--root={root}", "--only=PHD-9"]) == 2
    assert "--only='PHD-9' is invalid" in capsys.readouterr().err


def test_report_builds_every_table_and_plot(study, tmp_path):
    root, results, _, _ = study
    where = os.path.join(results, "when_pays")
    out = str(tmp_path / "docs" / "page.md")
    text = report.write(f"when_pays={where}", out, ["when_pays"], skip_missing=True)
    finals = {n: read_metrics(_kept(results, n))[-1]["val_loss"] for n in ONLY}
    # the claims: Δ from the runs, one seed so no σ and no minimum detectable effect
    row = next(line for line in text.splitlines() if line.startswith("| PHD-2 beats vanilla at matched tokens |"))
    assert "**not detected: 1 seed, so no σ and no minimum detectable effect**" in row
    assert f"Δ = {finals['PHD-2'] - finals['vanilla']:+.4f}" in row
    # the K' table: the kprime.json numbers
    data = {r["repeat"]: r for r in kprime.load(_kept(results, "PHD-2"))["kprime"]}
    for k, r in data.items():
        kk = f"**{k}**" if k == 2 else str(k)
        assert f"| PHD-2 (K = 2) | {kk} | PHD-{k} | 1 | {r['val_loss']:.4f} ± – |" in text
        assert f"| {r['decode_tokens_per_s']:.1f} | {r['speed_vs_k1']:.2f} |" in text
    # the Δ curves: PHD-2 − vanilla at every evaluation, from the two runs' metrics
    res = {n: collect(where, n) for n in ONLY}
    c = delta_curve(res["PHD-2"], res["vanilla"], "tokens")
    van = {r["tokens"]: r["val_loss"] for r in read_metrics(_kept(results, "vanilla")) if "val_loss" in r}
    phd = [(r["tokens"], r["val_loss"]) for r in read_metrics(_kept(results, "PHD-2")) if "val_loss" in r]
    assert np.allclose(c.x, [t for t, _ in phd]) and np.allclose(c.mean, [v - van[t] for t, v in phd])
    assert f"- {describe(c)}" in text
    # at matched FLOPs: vanilla-x2tokens read at PHD-2's final FLOPs (between its evaluations)
    f = delta_curve(res["PHD-2"], res["vanilla-x2tokens"], "flops")
    x2 = [(r["flops"], r["val_loss"]) for r in read_metrics(_kept(results, "vanilla-x2tokens")) if "val_loss" in r]
    at = np.interp(read_metrics(_kept(results, "PHD-2"))[-1]["flops"], [p[0] for p in x2], [p[1] for p in x2])
    assert f.mean[-1] == pytest.approx(finals["PHD-2"] - at, abs=1e-9)
    assert f"- {describe(f)}" in text
    for stem in (
        "when_pays_tokens",
        "when_pays_flops",
        "when_pays_delta_tokens",
        "when_pays_delta_flops",
        "when_pays_kprime",
    ):
        png = tmp_path / "docs" / "page" / f"{stem}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"](page/{stem}.png)" in text
    # the continuation's claims are judged like the others (one seed: no σ)
    row = next(line for line in text.splitlines() if line.startswith("| vanilla continued as PHD-2 from its midpoint"))
    assert f"Δ = {finals[CONTINUED] - finals['vanilla']:+.4f}" in row and "not detected: 1 seed" in row
    # the pilot's numbers lead the main study (from the committed pilot results)
    assert "**The pilot**" in text


def test_continuation_table_at_matched_tokens_and_flops(study, tmp_path):
    """The sweep's continuation (vanilla's step-1 checkpoint continued as PHD-2 with its full state):
    its row against vanilla at the same step, and against vanilla-x2tokens read at the FLOPs the
    trainer logged for it (vanilla's step, then PHD-2's)."""
    root, results, _, _ = study
    where = os.path.join(results, "when_pays")
    with open(os.path.join(root, CONTINUED, "seed0", "config.json")) as f:
        cfg = json.load(f)
    assert cfg["init_state"] == "full" and cfg["init_from"].endswith(
        os.path.join("vanilla", "seed0", "checkpoints", "1")
    )
    text = report.write(f"when_pays={where}", str(tmp_path / "page.md"), ["when_pays"], skip_missing=True)
    last = {n: read_metrics(_kept(results, n))[-1] for n in (CONTINUED, "vanilla", "vanilla-x2tokens")}
    tokens_row = next(line for line in text.splitlines() if line.startswith("| matched original tokens |"))
    delta = last[CONTINUED]["val_loss"] - last["vanilla"]["val_loss"]
    assert f"| {CONTINUED} | vanilla | {delta:+.4f} | – | 1 |" in tokens_row
    x2 = [(r["flops"], r["val_loss"]) for r in read_metrics(_kept(results, "vanilla-x2tokens")) if "val_loss" in r]
    ref = np.interp(last[CONTINUED]["flops"], [p[0] for p in x2], [p[1] for p in x2])
    flops_row = next(line for line in text.splitlines() if line.startswith("| matched training FLOPs"))
    assert f"| {last[CONTINUED]['val_loss'] - ref:+.4f} | – | 1 |" in flops_row
    assert "vanilla-x2tokens at the same FLOPs" in flops_row
    # the report's FLOPs of the continuation (phd_jax.flops) are the trainer's logged ones
    res = {n: collect(where, n) for n in (CONTINUED, "vanilla")}
    flops = sections.continuation_flops(res[CONTINUED], res["vanilla"], 0)
    assert flops == pytest.approx(last[CONTINUED]["flops"], rel=1e-9)
    assert last["vanilla"]["flops"] < flops < last["vanilla-x2tokens"]["flops"]


def test_zero_crossings_are_found_between_evaluations():
    x = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    assert zero_crossings(x, np.array([1.0, -1.0, -2.0, 2.0, 3.0])) == [(0.5, "down"), (2.5, "up")]
    assert zero_crossings(x, np.array([-1.0, -1.0, -2.0, -2.0, -3.0])) == []


def test_a_study_without_runs_keeps_its_part_of_the_page_rejudged(tmp_path):
    """Regenerating on a machine without an old study's runs keeps that study's part, with its
    verdicts re-judged by the current rule from the numbers it shows."""
    claim = LOSS_VS_K.claims[0]
    begin, end = report.study_markers("loss_vs_k")
    numbers = "Δ = -0.0008, σ = 0.0159 (paired, n = 3)"  # as an earlier report wrote it
    old_row = f"| {claim.text} | {claim.a} | {claim.b} | **inconclusive at this scale** | {numbers} |"
    page = tmp_path / "page.md"
    page.write_text(f"# P\n{report.BEGIN}\n{begin}\n### old part\n{old_row}\n{end}\n{report.END}\n")
    empty = tmp_path / "no_runs"
    empty.mkdir()
    text = report.write(str(empty), str(page), ["loss_vs_k"], skip_missing=True)
    assert "### old part" in text and "inconclusive" not in text
    assert "**not detected: the minimum detectable effect here is 2σ = 0.0318**" in text
    assert f"no finished run of this study under `{empty}`" in text
    assert text.count("Kept from the previous page") == 1
    text = report.write(str(empty), str(page), ["loss_vs_k"], skip_missing=True)  # stable on a rerun
    assert text.count("Kept from the previous page") == 1 and "2σ = 0.0318" in text
    assert re.search(r"\| vanilla \| \d+ \| \d+ \|", text) is None  # nothing of the empty root was added


def test_the_main_study_leads_where_the_page_places_it(study, tmp_path, monkeypatch):
    """docs/reproduction.md places the main study's markers above its results block: the part is
    written there (with the rule and the hand-written conclusions), the other studies stay in the
    block, and a rerun is stable."""
    _, results, _, _ = study
    conclusions = tmp_path / "conclusions.md"
    conclusions.write_text("**What to conclude.** Hand-written, kept as it is.\n")
    monkeypatch.setattr(sections, "CONCLUSIONS", str(conclusions))
    begin, end = report.study_markers("when_pays")
    page = tmp_path / "page.md"
    page.write_text(f"# P\n## Main\n{begin}\n{end}\n## Old study\nhand-written\n{report.BEGIN}\n{report.END}\n")
    empty = tmp_path / "no_runs"
    empty.mkdir()
    roots = f"{empty},when_pays={os.path.join(results, 'when_pays')}"
    text = report.write(roots, str(page), ["when_pays", "loss_vs_k"], skip_missing=True)
    main, rest = text.split("## Old study\n")
    assert "| PHD-2 beats vanilla at matched tokens |" in main and "**Verdict rule.**" in main
    assert main.count("**What to conclude.** Hand-written, kept as it is.") == 1
    assert "(`loss_vs_k`)" in rest and "(`when_pays`)" not in rest
    assert report.write(roots, str(page), ["when_pays", "loss_vs_k"], skip_missing=True) == text


def test_readme_summary_follows_the_main_study_and_keeps_old_rows(study, tmp_path):
    _, results, _, _ = study
    claim = LOSS_VS_K.claims[0]
    nums, old = "-0.0008 | 0.0159 | 3", "**inconclusive at this scale**"  # as an earlier summary wrote it
    old_row = f"| `loss_vs_k` | {claim.text} | {claim.a} | {claim.b} | {nums} | {old} |"
    readme = tmp_path / "README.md"
    readme.write_text(f"# R\n{report.SUMMARY_BEGIN}\n| h |\n{old_row}\n{report.SUMMARY_END}\n")
    empty = tmp_path / "no_runs"
    empty.mkdir()
    roots = f"{empty},when_pays={os.path.join(results, 'when_pays')}"
    text = report.write_summary(roots, str(tmp_path / "docs" / "page.md"), ["when_pays", "loss_vs_k"], str(readme))
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert rows[0].startswith("| `when_pays` | PHD-2 beats vanilla at matched tokens |")  # the main study first
    assert rows[-1] == old_row.replace("inconclusive at this scale", report.not_detected(0.0159, 3))
    assert "](docs/page/when_pays_tokens.png)" in text


def test_report_refuses_a_root_of_an_unknown_study(tmp_path, capsys):
    assert report.main([f"--root=nostudy={tmp_path}", f"--out={tmp_path / 'p.md'}"]) == 2
    assert "'nostudy' is not a study" in capsys.readouterr().err and not (tmp_path / "p.md").exists()
    assert report.main([f"--root=when_pays={tmp_path / 'absent'}", f"--out={tmp_path / 'p.md'}"]) == 2
    assert "no such directory" in capsys.readouterr().err and not (tmp_path / "p.md").exists()
