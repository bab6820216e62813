"""Evaluate a training run's checkpoint: what `eval.py` does, importable from a notebook.

    results = evaluate_checkpoint(workdir="runs/default", loss=True, tasks="shakespeare_mc",
                                  prompts=["ROMEO."], report=True)

The model is rebuilt from the run's saved `model_config.json`, never from flags:
`overrides` (the `--config.*` flags) may change only inference-only model fields
(`INFERENCE_ONLY`, said in the output) and the evaluation data (`data.*`, `seq_len`,
`batch_size`, `eval_batches`, `val_fraction`); a model field that contradicts the
checkpoint is refused. `repeat` = K' evaluates a PHD-K checkpoint with K' copies per token
(`phd_jax.evaluation.repeat`; PHD adds no parameters). Every input is checked before any
work, and the results are written once, at the end, to `WORKDIR/eval/<step>.json` (merged
with an earlier evaluation of the same step; results at a K' other than the trained K go
under `"repeats": {"<K'>": {...}}`, never over the trained K's).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import time

from phd_jax import paths
from phd_jax.config import canonical_field
from phd_jax.errors import ConfigError, as_int, fail

INFERENCE_ONLY = ("attention", "block_q", "block_kv", "dtype", "remat")
EVAL_KEYS = ("seq_len", "batch_size", "eval_batches", "val_fraction", "seed")


@dataclasses.dataclass
class Run:
    workdir: str
    step: int | None
    config: object  # the run config (ml_collections), with the evaluation overrides
    model_config: object  # ModelConfig, with the inference-only changes
    changes: dict  # inference-only changes: field -> (saved, now)
    trained: object = None  # the saved ModelConfig (its K: trained.repeat)


def _locate(workdir: str | None, checkpoint: str | None, step: int | None):
    """(workdir, step or None) from --workdir [--step] or --checkpoint=WORKDIR/checkpoints/<step>."""
    if checkpoint:
        path = paths.absolute(checkpoint)
        if not paths.isdir(path):
            fail("checkpoint", checkpoint, "does not exist", FileNotFoundError)
        parent = os.path.dirname(path)
        if os.path.basename(parent) != "checkpoints" or not os.path.basename(path).isdigit():
            fail("checkpoint", checkpoint, "must be a WORKDIR/checkpoints/<step> directory written by train.py")
        found = os.path.dirname(parent)
        if workdir and paths.absolute(workdir) != found:
            fail("checkpoint", checkpoint, f"is not a checkpoint of workdir={workdir!r}")
        ckpt_step = int(os.path.basename(path))
        if step is not None and step != ckpt_step:
            fail("step", step, f"contradicts checkpoint={checkpoint!r} (step {ckpt_step})")
        return found, ckpt_step
    if not workdir:
        fail("workdir", workdir, "give --workdir=DIR (a train.py run) or --checkpoint=DIR/checkpoints/STEP")
    if not paths.isdir(workdir):
        fail("workdir", workdir, "does not exist", FileNotFoundError)
    for name in ("config.json", "model_config.json"):
        if not paths.isfile(os.path.join(workdir, name)):
            fail("workdir", workdir, f"has no {name}: not a train.py run directory", ConfigError)
    return paths.absolute(workdir), step


def resolve_run(workdir=None, checkpoint=None, step=None, overrides: dict | None = None, repeat=None) -> Run:
    """The run's config and ModelConfig with `overrides` and `repeat` (K') applied and checked
    (no weights read)."""
    from phd_jax.evaluation.repeat import with_repeat
    from phd_jax.train import load_run_config
    from phd_jax.train.checkpoint import load_model_config

    workdir, step = _locate(workdir, checkpoint, step)
    config = load_run_config(workdir)
    saved = load_model_config(workdir)
    changes, model_changes = {}, {}
    for key, value in sorted((overrides or {}).items()):
        section, _, field = key.partition(".")
        if section == "model":
            before = config.model[field] if field in config.model else getattr(saved, field, None)
            if canonical_field(field, value) == canonical_field(field, before):
                continue
            if field == "repeat":
                fail(
                    f"config.{key}",
                    value,
                    f"contradicts the checkpoint, which is {saved.name} with repeat={before!r}; "
                    f"to evaluate it with K'={value} copies per token, use --repeat={value} "
                    "(evaluate_checkpoint(..., repeat=...))",
                    ConfigError,
                )
            if field not in INFERENCE_ONLY:
                fail(
                    f"config.{key}",
                    value,
                    f"contradicts the checkpoint, which is {saved.name} with "
                    f"{field}={before!r} (the model comes from {workdir}/model_config.json; only "
                    f"inference-only fields may change: {', '.join(INFERENCE_ONLY)})",
                    ConfigError,
                )
            changes[field] = (getattr(saved, field), value)
            model_changes[field] = value
        elif section == "data" or key in EVAL_KEYS:
            with config.unlocked():
                if section == "data":
                    config.data[field] = value
                else:
                    config[key] = value
        else:
            fail(
                f"config.{key}",
                value,
                "does not affect evaluation (allowed: config.model."
                f"{{{','.join(INFERENCE_ONLY)}}}, config.data.*, config.{{{','.join(EVAL_KEYS)}}})",
                ConfigError,
            )
    try:
        cfg = saved.replace(**model_changes)
    except ValueError as e:
        raise ConfigError(str(e).replace("ModelConfig.", "config.model.")) from None
    return Run(workdir, step, config, with_repeat(cfg, repeat), changes, saved)


DEFAULT_NEW_TOKENS = 64  # generated per prompt unless max_new_tokens says otherwise (shortened to fit)


def _read_text(flag: str, path: str) -> str:
    """The UTF-8 text of the file a flag names; a clear error naming both otherwise."""
    if not paths.isfile(path):
        fail(flag, path, "does not exist", FileNotFoundError)
    try:
        with paths.open_file(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        fail(flag, path, f"is not UTF-8 text ({e.reason} at byte {e.start})", ConfigError)


def _read_prompts(prompts, prompts_file):
    out = list(prompts or [])
    if prompts_file:
        lines = [line for line in _read_text("prompts_file", prompts_file).splitlines() if line.strip()]
        if not lines:
            fail("prompts_file", prompts_file, "is empty: one prompt per line expected", ConfigError)
        out += [line.replace("\\n", "\n") for line in lines]
    return out


def _new_tokens(max_new_tokens, prompt_lengths: list[int], max_seq_len: int, log) -> int:
    """`max_new_tokens` as given (checked), or by default DEFAULT_NEW_TOKENS shortened to what fits
    after the longest prompt in the model's context (said in one line when shortened)."""
    if max_new_tokens is not None:
        return as_int("max_new_tokens", max_new_tokens, 1, max_seq_len - 1)
    room = max_seq_len - max(prompt_lengths)
    if room < DEFAULT_NEW_TOKENS and room >= 1:
        log(
            f"max_new_tokens: {room}, not the default {DEFAULT_NEW_TOKENS}: what fits after the longest "
            f"prompt ({max(prompt_lengths)} tokens) in the model's context (max_seq_len={max_seq_len})"
        )
    return max(1, min(DEFAULT_NEW_TOKENS, room))


def evaluate_checkpoint(
    workdir=None,
    *,
    checkpoint=None,
    step=None,
    overrides=None,
    repeat=None,
    loss=False,
    loss_file=None,
    tasks=None,
    limit=None,
    num_fewshot=None,
    prompts=(),
    prompts_file=None,
    max_new_tokens=None,
    temperature=0.0,
    top_k=0,
    top_p=1.0,
    seed=0,
    stop_at_eos=True,
    report=False,
    report_lengths=(64, 256),
    batch_size=8,
    write=True,
    log=print,
) -> dict:
    """Run the requested evaluations on one checkpoint; return (and write) the results dict.

    `repeat` = K': evaluate a PHD-K checkpoint with K' copies per token (None: the trained K)."""
    from phd_jax.data import make_pipeline, make_tokenizer
    from phd_jax.evaluation.generation import generate_text
    from phd_jax.evaluation.loss import evaluate_loss, text_batches
    from phd_jax.evaluation.repeat import repeat_note
    from phd_jax.evaluation.report import inference_report
    from phd_jax.evaluation.tasks import check_tasks, run_tasks, task_manager
    from phd_jax.train import restore_params

    run = resolve_run(workdir, checkpoint, step, overrides, repeat)
    cfg, config = run.model_config, run.config
    prompts = _read_prompts(prompts, prompts_file)
    if not (loss or loss_file or tasks or prompts or report):
        fail(
            "evaluation",
            None,
            "nothing requested: pass --loss, --loss_file, --tasks, --generate / --prompts_file or --report",
        )
    batch_size = as_int("batch_size", batch_size, 1)
    tokenizer = make_tokenizer(config.data.tokenizer)
    # -- every check before any work -------------------------------------------------------------
    manager = None
    if tasks:
        manager = task_manager(tasks=tasks)
        tasks = check_tasks(tasks, manager)
    loss_text = _read_text("loss_file", loss_file) if loss_file else None
    lengths = [len(tokenizer.encode(p)) for p in prompts]
    if prompts:
        max_new_tokens = _new_tokens(max_new_tokens, lengths, cfg.max_seq_len, log)
    for i, (p, n) in enumerate(zip(prompts, lengths)):
        if n + max_new_tokens > cfg.max_seq_len:
            fail(
                f"prompt[{i}]",
                p,
                f"has {n} tokens; with max_new_tokens={max_new_tokens} it needs "
                f"{n + max_new_tokens} positions, more than the model's context max_seq_len="
                f"{cfg.max_seq_len}",
            )
    for field, (before, now) in run.changes.items():
        log(f"inference-only change: model.{field} {before!r} -> {now!r} (same weights, same model)")
    if cfg.repeat != run.trained.repeat:
        log(repeat_note(run.trained, cfg))

    _, params, step = restore_params(run.workdir, run.step)
    results = {
        "model": cfg.name,
        "step": step,
        "workdir": run.workdir,
        "inference_changes": {f: list(v) for f, v in run.changes.items()},
        "repeat": cfg.repeat,
        "trained_repeat": run.trained.repeat,
    }
    t0 = time.perf_counter()
    if loss:
        pipe = make_pipeline(config)
        res = evaluate_loss(params, cfg, pipe.eval_batches(), tokenizer)
        res["source"] = config.data.eval_source or config.data.source
        results["loss"] = res
    if loss_file:
        batches = text_batches(tokenizer, loss_text, int(config.seq_len), batch_size)
        results["loss_file"] = {**evaluate_loss(params, cfg, batches, tokenizer), "file": loss_file}
    if tasks:
        from phd_jax.evaluation.lm import PHDLM

        lm = PHDLM(params, cfg, tokenizer, batch_size=batch_size)
        results["tasks"] = run_tasks(lm, tasks, manager=manager, limit=limit, num_fewshot=num_fewshot, seed=seed)
    if prompts:
        texts = generate_text(
            params,
            cfg,
            tokenizer,
            prompts,
            max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            stop_at_eos=stop_at_eos,
            batch_size=batch_size,
        )
        results["generate"] = {
            "settings": dict(
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                seed=seed,
                stop_at_eos=stop_at_eos,
            ),
            "samples": [{"prompt": p, "text": t} for p, t in zip(prompts, texts)],
        }
    if report:
        results["report"] = inference_report(params, cfg, lengths=tuple(report_lengths))
    results["seconds"] = round(time.perf_counter() - t0, 2)
    results["time"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    if write:
        results["file"] = write_results(run.workdir, step, results)
    return results


def write_results(workdir: str, step: int, results: dict) -> str:
    """Merge `results` into `WORKDIR/eval/<step>.json` (atomically); return its path.

    Results at the trained K merge at the top level; results at another K' merge into
    `"repeats": {"<K'>": {...}}` (so no K' overwrites another, nor the trained K's)."""
    folder = os.path.join(workdir, "eval")
    paths.makedirs(folder)
    path = os.path.join(folder, f"{step}.json")
    merged = {}
    if paths.isfile(path):
        merged = json.loads(paths.read_text(path))
    new = {k: v for k, v in results.items() if k != "file"}
    if new.get("repeat", new.get("trained_repeat")) != new.get("trained_repeat"):
        shared = {k: new.pop(k) for k in ("step", "workdir", "trained_repeat")}
        for k, v in shared.items():
            merged.setdefault(k, v)
        merged.setdefault("repeats", {}).setdefault(str(new["repeat"]), {}).update(new)
    else:
        merged.update(new)
    paths.write_atomic(path, json.dumps(merged, indent=2))  # one whole object on gs://
    return path


def format_results(results: dict) -> str:
    """A readable table of every metric in `results` (metrics at a K' other than the trained K
    are labelled `<metric>@K=<K'>`, as in `loss@K=3: perplexity`)."""
    from phd_jax.evaluation.repeat import repeat_tag

    tag = repeat_tag(results)
    model = f"{results['model']} (step {results['step']}"
    model += f"; trained with K={results['trained_repeat']})" if tag else ")"
    rows = [("model", model)]
    for key in ("loss", "loss_file"):
        if key in results:
            r = results[key]
            where = r.get("source") or r.get("file")
            rows += [
                (f"{key}{tag}: loss (nats/token)", f"{r['loss']:.4f}"),
                (f"{key}{tag}: perplexity", f"{r['perplexity']:.3f}"),
                (f"{key}{tag}: bits per byte", f"{r['bits_per_byte']:.4f}"),
                (f"{key}{tag}: tokens", f"{r['tokens']:,} ({where})"),
            ]
    for task, metrics in results.get("tasks", {}).items():
        rows += [
            (f"{task}{tag}: {m}", f"{v:.4f}" if isinstance(v, float) else str(v))
            for m, v in metrics.items()
            if m != "alias"
        ]
    for row in results.get("report", []):
        t = row["prompt_len"]
        rows.append(
            (
                f"report{tag} T={t}: KV cache bytes (vanilla)",
                f"{row['kv_cache_bytes']:,} ({row['vanilla_kv_cache_bytes']:,})",
            )
        )
        rows.append(
            (
                f"report{tag} T={t}: prefill ms (vanilla)",
                f"{row['prefill_s'] * 1e3:.2f}"
                + (f" ({row['vanilla_prefill_s'] * 1e3:.2f})" if "vanilla_prefill_s" in row else ""),
            )
        )
        rows.append(
            (
                f"report{tag} T={t}: decode ms/token (vanilla)",
                f"{row['decode_s_per_token'] * 1e3:.2f}"
                + (f" ({row['vanilla_decode_s_per_token'] * 1e3:.2f})" if "vanilla_decode_s_per_token" in row else ""),
            )
        )
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    for s in results.get("generate", {}).get("samples", []):
        lines += ["", f"--- {s['prompt']!r} ->", s["prompt"] + s["text"]]
    return "\n".join(lines)
