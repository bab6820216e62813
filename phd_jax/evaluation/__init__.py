"""Evaluation: loss / perplexity / bits per byte, an lm-evaluation-harness model, text generation,
and an inference cost report. `eval.py` is the command line over these."""

from phd_jax.evaluation.generation import generate_text
from phd_jax.evaluation.loss import evaluate_loss, text_batches, token_bytes
from phd_jax.evaluation.report import inference_report, vanilla_of
from phd_jax.evaluation.scoring import bucket, score_sequences, token_logprobs
from phd_jax.evaluation.tasks import PAPER_TASKS, check_tasks, run_tasks, task_manager


def __getattr__(name):
    if name == "PHDLM":  # lm-eval is a heavy import: only when asked for
        from phd_jax.evaluation.lm import PHDLM

        return PHDLM
    raise AttributeError(name)


__all__ = [
    "PAPER_TASKS",
    "PHDLM",
    "bucket",
    "check_tasks",
    "evaluate_loss",
    "generate_text",
    "inference_report",
    "run_tasks",
    "score_sequences",
    "task_manager",
    "text_batches",
    "token_bytes",
    "token_logprobs",
    "vanilla_of",
]
