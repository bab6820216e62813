"""Evaluate a train.py checkpoint; the model comes from the run's saved config, never from flags.

USAGE: phd-eval --workdir=DIR [--step=N | --checkpoint=DIR/checkpoints/STEP] [--loss] [--loss_file=FILE]
                [--tasks=a,b] [--generate=PROMPT ...] [--prompts_file=FILE] [--report] [--config.data.*=...]

Prints a table and writes WORKDIR/eval/<step>.json (`eval.py` and the `phd-eval` console script
run this module; the logic is `phd_jax.evaluation.run.evaluate_checkpoint`).
"""

import sys

from absl import flags, logging
from ml_collections import config_flags


def _fail(e: BaseException):
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def _base_config():
    from phd_jax.train.config import base_config

    return base_config()


try:
    _CONFIG = config_flags.DEFINE_config_dict(
        "config",
        _base_config(),
        "Only evaluation data (config.data.*, seq_len, batch_size, eval_batches) "
        "and inference-only model fields (config.model.attention, block_q, block_kv, dtype) may be set.",
    )
except Exception as e:  # an unknown key in an override
    _fail(e)
_WORKDIR = flags.DEFINE_string("workdir", None, "A train.py workdir (its latest checkpoint, or --step).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A checkpoint: WORKDIR/checkpoints/<step>.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_LOSS = flags.DEFINE_bool(
    "loss", False, "Validation loss, perplexity, bits per byte (the run's data, or --config.data.source / eval_source)."
)
_LOSS_FILE = flags.DEFINE_string("loss_file", None, "Also the loss on this text file.")
_TASKS = flags.DEFINE_string("tasks", None, "lm-eval tasks, comma-separated (local ones: examples/tasks).")
_LIMIT = flags.DEFINE_integer("limit", None, "At most this many examples per task.")
_FEWSHOT = flags.DEFINE_integer("num_fewshot", None, "Few-shot examples per task.")
_GENERATE = flags.DEFINE_multi_string("generate", [], "A prompt to continue (repeatable; \\n = newline).")
_PROMPTS = flags.DEFINE_string("prompts_file", None, "Prompts, one per line.")
_NEW = flags.DEFINE_integer("max_new_tokens", 64, "Tokens to generate per prompt.")
_TEMP = flags.DEFINE_float("temperature", 0.0, "0 = greedy.")
_TOPK = flags.DEFINE_integer("top_k", 0, "Sample from the k most likely tokens (0 = all).")
_TOPP = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_EOS = flags.DEFINE_bool("stop_at_eos", True, "Stop a sample at the tokenizer's EOS.")
_REPORT = flags.DEFINE_bool("report", False, "KV cache bytes vs vanilla, prefill and decode times.")
_REPORT_LENGTHS = flags.DEFINE_list("report_lengths", ["64", "192"], "Prompt lengths for --report.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Rows per batch for tasks, generation and --loss_file.")


def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    from phd_jax.errors import ConfigError
    from phd_jax.evaluation.run import evaluate_checkpoint, format_results

    try:
        overrides = config_flags.get_override_values(flags.FLAGS["config"])
        results = evaluate_checkpoint(
            _WORKDIR.value,
            checkpoint=_CHECKPOINT.value,
            step=_STEP.value,
            overrides=overrides,
            loss=_LOSS.value,
            loss_file=_LOSS_FILE.value,
            tasks=_TASKS.value,
            limit=_LIMIT.value,
            num_fewshot=_FEWSHOT.value,
            prompts=[p.replace("\\n", "\n") for p in _GENERATE.value],
            prompts_file=_PROMPTS.value,
            max_new_tokens=_NEW.value,
            temperature=_TEMP.value,
            top_k=_TOPK.value,
            top_p=_TOPP.value,
            seed=_SEED.value,
            stop_at_eos=_EOS.value,
            report=_REPORT.value,
            report_lengths=[int(x) for x in _REPORT_LENGTHS.value],
            batch_size=_BATCH.value,
        )
    except (ConfigError, ValueError, TypeError, FileNotFoundError) as e:
        _fail(e)
    print(format_results(results))
    print(f"\nwritten: {results['file']}")
