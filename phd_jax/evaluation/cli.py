"""Evaluate a train.py checkpoint; the model comes from the run's saved config, never from flags.

USAGE: phd-eval --workdir=DIR [--step=N | --checkpoint=DIR/checkpoints/STEP] [--repeat=K'] [--loss]
                [--loss_file=FILE] [--tasks=a,b] [--generate=PROMPT ...] [--prompts_file=FILE] [--report]
                [--config.data.*=...]

Prints a table and writes WORKDIR/eval/<step>.json (`eval.py` and the `phd-eval` console script
run this module; the logic is `phd_jax.evaluation.run.evaluate_checkpoint`).

The program: `define_flags()` (before parsing), `main(argv)`. Importing this module defines
nothing and runs nothing.
"""

import os
import sys

from absl import flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
_defined = []  # once define_flags() ran


def _fail(e) -> None:
    """One line on stderr, exit status 2; with --debug (or PHD_JAX_DEBUG=1) the traceback instead."""
    if ("debug" in FLAGS and FLAGS.is_parsed() and FLAGS.debug) or os.environ.get("PHD_JAX_DEBUG") == "1":
        raise e
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def define_flags():
    """Define the program's flags (once, before parsing). ml_collections applies the command
    line's `--config.*` overrides while defining `--config`: an unknown key is one line, exit 2."""
    if _defined:
        return
    _defined.append(True)
    from phd_jax.train.config import base_config

    try:
        config_flags.DEFINE_config_dict(
            "config",
            base_config(),
            "Only evaluation data (config.data.*, seq_len, batch_size, eval_batches) "
            "and inference-only model fields (config.model.attention, block_q, block_kv, dtype) may be set.",
        )
    except Exception as e:  # an unknown key in an override
        _fail(e)
    flags.DEFINE_string("workdir", None, "A train.py workdir (its latest checkpoint, or --step).")
    flags.DEFINE_string("checkpoint", None, "A checkpoint: WORKDIR/checkpoints/<step>.")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
    flags.DEFINE_integer(
        "repeat",
        None,
        "Evaluate a PHD-K checkpoint with K' copies per token (default: the trained K; same parameters; "
        "W and C unchanged; results under repeats.<K'> in the JSON).",
    )
    flags.DEFINE_bool(
        "loss",
        False,
        "Validation loss, perplexity, bits per byte (the run's data, or --config.data.source / eval_source).",
    )
    flags.DEFINE_string("loss_file", None, "Also the loss on this text file.")
    flags.DEFINE_string("tasks", None, "lm-eval tasks, comma-separated (local ones: examples/tasks).")
    flags.DEFINE_integer("limit", None, "At most this many examples per task.")
    flags.DEFINE_integer("num_fewshot", None, "Few-shot examples per task.")
    flags.DEFINE_multi_string("generate", [], "A prompt to continue (repeatable; \\n = newline).")
    flags.DEFINE_string("prompts_file", None, "Prompts, one per line.")
    flags.DEFINE_integer(
        "max_new_tokens", None, "Tokens to generate per prompt (default: 64, or what fits after the longest prompt)."
    )
    flags.DEFINE_float("temperature", 0.0, "0 = greedy.")
    flags.DEFINE_integer("top_k", 0, "Sample from the k most likely tokens (0 = all).")
    flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass.")
    flags.DEFINE_integer("seed", 0, "Sampling seed.")
    flags.DEFINE_bool("stop_at_eos", True, "Stop a sample at the tokenizer's EOS.")
    flags.DEFINE_bool("report", False, "KV cache bytes vs vanilla, prefill and decode times.")
    flags.DEFINE_list("report_lengths", ["64", "192"], "Prompt lengths for --report.")
    flags.DEFINE_integer("batch_size", 8, "Rows per batch for tasks, generation and --loss_file.")


def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    from phd_jax.errors import ConfigError
    from phd_jax.evaluation.run import evaluate_checkpoint, format_results
    from phd_jax.train.checkpoint import shown_path
    from phd_jax.train.restore import RestoreError

    try:
        overrides = config_flags.get_override_values(FLAGS["config"])
        results = evaluate_checkpoint(
            FLAGS.workdir,
            checkpoint=FLAGS.checkpoint,
            step=FLAGS.step,
            overrides=overrides,
            repeat=FLAGS.repeat,
            loss=FLAGS.loss,
            loss_file=FLAGS.loss_file,
            tasks=FLAGS.tasks,
            limit=FLAGS.limit,
            num_fewshot=FLAGS.num_fewshot,
            prompts=[p.replace("\\n", "\n") for p in FLAGS.generate],
            prompts_file=FLAGS.prompts_file,
            max_new_tokens=FLAGS.max_new_tokens,
            temperature=FLAGS.temperature,
            top_k=FLAGS.top_k,
            top_p=FLAGS.top_p,
            seed=FLAGS.seed,
            stop_at_eos=FLAGS.stop_at_eos,
            report=FLAGS.report,
            report_lengths=[int(x) for x in FLAGS.report_lengths],
            batch_size=FLAGS.batch_size,
        )
    except (ConfigError, RestoreError, ValueError, TypeError, FileNotFoundError) as e:
        _fail(e)
    print(format_results(results))
    print(f"\nwritten: {shown_path(results['file'])}")
