"""The three studies: their settings and the claims the report judges.

A claim compares two settings' final validation loss (`a` vs `b`):
- `lower`:  the paper says `a` has a lower loss than `b`;
- `same`:   the paper says `a` costs (almost) nothing against `b` (chunking);
- `which`:  no claim (the paper never ran it): the report says which is lower, if either.
"""

from __future__ import annotations

import dataclasses

from experiments.sweep import Setting

WINDOW = 16  # the paper's W (hidden tokens); fits 128-position sequences at every K
CHUNK = 32  # the paper's C for PHD-CSWA (Table 1)


@dataclasses.dataclass(frozen=True)
class Claim:
    kind: str  # lower | same | which
    a: str
    b: str
    text: str


@dataclasses.dataclass(frozen=True)
class Study:
    name: str
    title: str
    settings: tuple
    claims: tuple
    x_axis: str = "tokens"  # the axis at which settings are matched: tokens or flops
    description: str = ""
    steps: int | None = None  # the default --steps (None: experiments/cli.py's DEFAULT_STEPS)
    evals: int = 10  # validations per run (experiments/sweep.py's schedule_for)
    defaults: tuple = ()  # ((dotted key, value), ...): config values of every run; --config.* wins


def S(name, **kw) -> Setting:
    return Setting(name=name, model=kw.pop("model", name), **kw)


VANILLA = S("vanilla")


def swa(k, w=WINDOW):
    return S(f"PHD-SWA-{k}-{w}-inf")


def cswa(k, w=WINDOW, c=CHUNK):
    return S(f"PHD-CSWA-{k}-{w}-{c}")


LOSS_VS_K = Study(
    name="loss_vs_k",
    title="Loss vs K at matched original tokens",
    description=(
        "Every setting trains the same number of steps on the same batches (same seed: same "
        "initial weights and data order), so each sees the same original tokens; PHD-K spends "
        "K times the compute on them. Paper: Table 2 (PHD-SWA-K-16-inf, loss falls with K), "
        "Table 1 (PHD-CSWA-K-16-32), Figure 1 (naive repetition)."
    ),
    settings=(
        VANILLA,
        S("PHD-2"),
        S("PHD-3"),
        S("PHD-4"),
        swa(2),
        swa(3),
        swa(4),
        cswa(2),
        S("naive-2"),
    ),  # PHD-CSWA-3 trimmed to fit the CPU budget: K is tested with SWA
    claims=(
        Claim("lower", "PHD-SWA-2-16-inf", "vanilla", "PHD-SWA-2 beats vanilla at matched tokens (Table 2)"),
        Claim("lower", "PHD-SWA-3-16-inf", "PHD-SWA-2-16-inf", "K=3 beats K=2 (Table 2)"),
        Claim("lower", "PHD-SWA-4-16-inf", "PHD-SWA-3-16-inf", "K=4 beats K=3 (Table 2: loss keeps falling with K)"),
        Claim("lower", "PHD-2", "vanilla", "PHD-2 (no window) beats vanilla"),
        Claim("lower", "PHD-4", "PHD-2", "PHD-4 beats PHD-2"),
        Claim("lower", "PHD-CSWA-2-16-32", "vanilla", "PHD-CSWA-2-16-32 beats vanilla (Table 1)"),
        Claim("which", "naive-2", "PHD-2", "naive repetition vs PHD at K=2 (Figure 1 baseline)"),
    ),
)

WINDOW_CHUNK = Study(
    name="window_chunk",
    title="Window and chunk ablations at K = 2",
    description=(
        "PHD-2 is W = 0. Windows W = 1, 4, 16 hidden tokens without chunks, and W = 16 cut at "
        "chunks of C = 16 and 32 positions. Paper: W from 1 to 4 recovers most of the gain, 16 a "
        "little more; chunking costs almost nothing."
    ),
    settings=(VANILLA, S("PHD-2"), swa(2, 1), swa(2, 4), swa(2, 16), cswa(2, 16, 16), cswa(2, 16, 32)),
    claims=(
        Claim("lower", "PHD-SWA-2-1-inf", "PHD-2", "a window of W=1 helps over none"),
        Claim("lower", "PHD-SWA-2-4-inf", "PHD-2", "a window of W=4 helps over none"),
        Claim("lower", "PHD-SWA-2-16-inf", "PHD-SWA-2-4-inf", "W=16 helps a little more than W=4"),
        Claim("same", "PHD-CSWA-2-16-32", "PHD-SWA-2-16-inf", "chunks of C=32 cost almost nothing"),
        Claim("same", "PHD-CSWA-2-16-16", "PHD-SWA-2-16-inf", "chunks of C=16 cost almost nothing"),
    ),
)


# K = 3 and 4 trimmed to fit the 3-hour CPU budget (K = 4's pair alone costs 10 min a seed);
# `FLOP_KS = (2, 4)` runs them where compute allows.
FLOP_KS = (2,)


def _flop_settings():
    out = [VANILLA]
    for k in FLOP_KS:
        out += [
            S(f"PHD-{k}"),
            S(f"vanilla-x{k}tokens", model="vanilla", steps_factor=k),
            S(f"vanilla-depth-PHD-{k}", model="vanilla", match_flops_of=f"PHD-{k}"),
        ]
    return tuple(out)


def _flop_claims():
    out = []
    for k in FLOP_KS:
        out += [
            Claim(
                "which",
                f"PHD-{k}",
                f"vanilla-x{k}tokens",
                f"PHD-{k} vs vanilla trained on {k}x the tokens (equal training FLOPs)",
            ),
            Claim(
                "which",
                f"PHD-{k}",
                f"vanilla-depth-PHD-{k}",
                f"PHD-{k} vs a deeper vanilla with PHD-{k}'s FLOPs per token (equal training FLOPs)",
            ),
        ]
    return tuple(out)


FLOP_MATCHED = Study(
    name="flop_matched",
    title="FLOP-matched baselines (the comparison the paper leaves out)",
    x_axis="flops",
    description=(
        "PHD-K spends K times a vanilla model's FLOPs per token. Two ways to give vanilla the "
        "same training FLOPs: train it on K times as many tokens (K times the steps), or make it "
        "deeper until its FLOPs per token match PHD-K's (depth chosen with phd_jax.flops; "
        "width and sequence length unchanged)."
    ),
    settings=_flop_settings(),
    claims=_flop_claims(),
)

STUDIES = {s.name: s for s in (LOSS_VS_K, WINDOW_CHUNK, FLOP_MATCHED)}


def _union(studies):
    settings, seen = [], set()
    for study in studies:
        for s in study.settings:
            if s.name not in seen:
                seen.add(s.name)
                settings.append(s)
    return tuple(settings)


ALL = Study(
    name="all",
    title="All three studies (each setting trained once)",
    settings=_union(STUDIES.values()),
    claims=(),
    description="Runs every setting of " + ", ".join(STUDIES) + " once per seed.",
)


# ---- pilot: the noise level of a larger setting (issue 20) ----------------------------------------

PILOT_STEPS = 600  # the pilot's default --steps
PILOT_LR = 3e-3  # configs/repro.py's learning_rate
PILOT_MODEL = (("model.d_model", 256), ("model.head_dim", 64), ("model.mlp_dim", 768))


def _pilot(model, factor=1, lr=None, group=0, seeds=None):
    """`d256-<steps>-<model>[-lr<x>x]`: configs/repro.py at d_model 256 (4 layers, 4 heads of 64,
    2 KV heads, MLP 768), `factor` x the default 600 steps, `lr` x the default learning rate."""
    name = f"d256-{PILOT_STEPS * factor}steps-{model}" + (f"-lr{lr:g}x" if lr else "")
    overrides = PILOT_MODEL + ((("learning_rate", PILOT_LR * lr),) if lr else ())
    return Setting(name, model, steps_factor=factor, overrides=overrides, group=group, seeds=seeds)


PILOT = Study(
    name="pilot",
    title="Pilot: paired seed spread of PHD-2 vs vanilla at d_model 256",
    description=(
        "configs/repro.py at d_model 256 (head_dim 64, mlp 768; 4 layers, 128-byte sequences, "
        "batch 16), 20 validations a run. How large is the seed-to-seed spread of the paired "
        "difference PHD-2 - vanilla (same seed: same initial weights and batches) at 600 steps, "
        "and does a 0.125x, 0.25x, 0.5x or 2x learning rate (seed 0 only) change the picture? Runs go: "
        "600 steps seed by seed, then the learning-rate check."
    ),
    settings=(
        _pilot("vanilla"),
        _pilot("PHD-2"),
        _pilot("vanilla", lr=0.5, group=1, seeds=(0,)),
        _pilot("PHD-2", lr=0.5, group=1, seeds=(0,)),
        _pilot("vanilla", lr=2, group=1, seeds=(0,)),
        _pilot("PHD-2", lr=2, group=1, seeds=(0,)),
        # Both were best at 0.5x, the edge of the grid: 0.25x tells whether the optimum is lower still
        # (vanilla: it is, 1.715 against 1.776), and 0.125x the same again.
        _pilot("vanilla", lr=0.25, group=1, seeds=(0,)),
        _pilot("PHD-2", lr=0.25, group=1, seeds=(0,)),
        _pilot("vanilla", lr=0.125, group=1, seeds=(0,)),
        _pilot("PHD-2", lr=0.125, group=1, seeds=(0,)),
        # The 1200-step candidate (`factor=2`) was trimmed: three seeds of it cost ~85 min of the
        # 6-hour budget, and the main study at 600 steps needs the rest (docs/pilot.md).
    ),
    claims=(
        Claim("lower", "d256-600steps-PHD-2", "d256-600steps-vanilla", "PHD-2 beats vanilla at 600 steps"),
        Claim(
            "lower",
            "d256-600steps-PHD-2-lr0.5x",
            "d256-600steps-vanilla-lr0.5x",
            "PHD-2 beats vanilla at 600 steps and 0.5x the learning rate",
        ),
    ),
    steps=PILOT_STEPS,
    evals=20,
    defaults=(("eval_batches", 8), ("keep_checkpoints", 1)),
)

# ---- the main study: when does PHD pay? (issue 20) ----------------------------------------------

# The pilot's choice (docs/pilot.md): its d_model-256 model for 600 steps, at 0.25x configs/repro.py's
# learning rate (7.5e-4), the best of five for both models at seed 0 (at 0.125x, 0.25x, 0.5x, 1x,
# 2x: vanilla 1.746, 1.715, 1.776, 1.843, 2.070; PHD-2 1.750, 1.705, 1.763, 1.809, 2.005).
MAIN_LR = PILOT_LR * 0.25


def _main(name, model=None, group=0, **kw):
    return Setting(name, model or name, group=group, **kw)


WHEN_PAYS = Study(
    name="when_pays",
    title="When does PHD pay? PHD vs vanilla at matched tokens and at matched FLOPs (d_model 256)",
    description=(
        "The pilot's setting: configs/repro.py at d_model 256 (head_dim 64, MLP 768; 4 layers, "
        "128-byte sequences, batch 16), 600 steps at learning rate 7.5e-4 (the best of five for both "
        "vanilla and PHD-2 in the pilot), 20 validations a run, seed-paired. Loss vs K at matched "
        "original tokens (vanilla, PHD-2, PHD-3, PHD-SWA-2-16, PHD-CSWA-2-16-32, naive-2) and at "
        "matched training FLOPs (PHD-2 vs vanilla on 2x the tokens and vs a vanilla deepened to "
        "PHD-2's FLOPs per token). Vanilla keeps its midpoint checkpoint for the continuation: "
        "vanilla-then-PHD-2 continues vanilla's step-300 checkpoint with its full state (optimizer "
        "state, learning-rate schedule, data position) as PHD-2 to step 600."
    ),
    settings=(
        _main("vanilla"),
        _main("PHD-2"),
        _main("PHD-3", group=1),
        _main("vanilla-x2tokens", "vanilla", group=1, steps_factor=2),
        _main("vanilla-depth-PHD-2", "vanilla", group=1, match_flops_of="PHD-2"),
        _main(f"PHD-SWA-2-{WINDOW}-inf", group=2),
        _main(f"PHD-CSWA-2-{WINDOW}-{CHUNK}", group=2),
        _main("naive-2", group=2),
        # Up-training with full state: vanilla's step-300 checkpoint (optimizer state, schedule, data
        # position) continued as PHD-2 to step 600, against vanilla itself from the same checkpoint.
        _main("vanilla-then-PHD-2", "PHD-2", group=3, continue_from="vanilla"),
    ),
    claims=(
        Claim("lower", "PHD-2", "vanilla", "PHD-2 beats vanilla at matched tokens"),
        Claim("lower", "PHD-3", "PHD-2", "K=3 beats K=2 (loss falls with K, Table 2)"),
        Claim("lower", "PHD-3", "vanilla", "PHD-3 beats vanilla at matched tokens"),
        Claim("lower", f"PHD-SWA-2-{WINDOW}-inf", "vanilla", "PHD-SWA-2-16 beats vanilla (Table 2)"),
        Claim("lower", f"PHD-CSWA-2-{WINDOW}-{CHUNK}", "vanilla", "PHD-CSWA-2-16-32 beats vanilla (Table 1)"),
        Claim("lower", f"PHD-SWA-2-{WINDOW}-inf", "PHD-2", "a window of W=16 hidden tokens helps over none"),
        Claim(
            "same",
            f"PHD-CSWA-2-{WINDOW}-{CHUNK}",
            f"PHD-SWA-2-{WINDOW}-inf",
            "chunks of C=32 cost almost nothing (Table 1)",
        ),
        Claim("which", "naive-2", "PHD-2", "naive repetition vs PHD at K=2 (Figure 1 baseline)"),
        Claim("which", "PHD-2", "vanilla-x2tokens", "PHD-2 vs vanilla on 2x the tokens (equal training FLOPs)"),
        Claim(
            "which",
            "PHD-2",
            "vanilla-depth-PHD-2",
            "PHD-2 vs a deeper vanilla with PHD-2's FLOPs per token (equal training FLOPs)",
        ),
        Claim(
            "lower",
            "vanilla-then-PHD-2",
            "vanilla",
            "vanilla continued as PHD-2 from its midpoint (full state) beats vanilla at matched tokens",
        ),
        Claim(
            "which",
            "vanilla-then-PHD-2",
            "vanilla-x2tokens",
            "vanilla continued as PHD-2 from its midpoint (about 1.5x vanilla's training FLOPs) vs vanilla "
            "on 2x the tokens (2x its FLOPs)",
        ),
    ),
    steps=PILOT_STEPS,
    evals=20,
    defaults=PILOT_MODEL + (("learning_rate", MAIN_LR), ("eval_batches", 8), ("keep_checkpoints", 4)),
)

OTHER_STUDIES = {PILOT.name: PILOT, WHEN_PAYS.name: WHEN_PAYS}  # run and reported on their own, never part of `all`
REPORTABLE = {**STUDIES, **OTHER_STUDIES}
COMMANDS = {**STUDIES, "all": ALL, **OTHER_STUDIES}

# ---- what the report draws from the main study (experiments/report.py, experiments/sections.py) ----

# (A, B, axis): the difference A − B over training, per seed, at matched original tokens or at matched
# training FLOPs (B read at A's FLOPs: vanilla on 2x the tokens spans PHD-2's FLOPs).
CURVES = {
    WHEN_PAYS.name: (
        ("PHD-2", "vanilla", "tokens"),
        ("PHD-3", "vanilla", "tokens"),
        (f"PHD-SWA-2-{WINDOW}-inf", "vanilla", "tokens"),
        (f"PHD-CSWA-2-{WINDOW}-{CHUNK}", "vanilla", "tokens"),
        ("naive-2", "vanilla", "tokens"),
        ("vanilla-then-PHD-2", "vanilla", "tokens"),  # from the midpoint on: what switching to PHD-2 costs or gains
        ("PHD-2", "vanilla-x2tokens", "flops"),
        ("PHD-3", "vanilla-x2tokens", "flops"),
        ("PHD-2", "vanilla-depth-PHD-2", "flops"),
    ),
    PILOT.name: tuple(
        (s.name.replace("vanilla", "PHD-2"), s.name, "tokens") for s in PILOT.settings if "-vanilla" in s.name
    ),
}
# (continued setting, the run it continues, the run that spends its training FLOPs on vanilla):
# vanilla continued from its midpoint checkpoint as PHD-2 with the full training state.
CONTINUATION = {WHEN_PAYS.name: ("vanilla-then-PHD-2", "vanilla", "vanilla-x2tokens")}
MAIN_STUDY = WHEN_PAYS.name  # the report's first study, and the README summary's
