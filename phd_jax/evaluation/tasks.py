"""lm-evaluation-harness tasks: the paper's benchmarks where their data is reachable, and local
YAML + JSONL tasks (the repository's `examples/tasks/`, or any folder you pass)."""

from __future__ import annotations

import difflib
import os

from phd_jax.errors import fail

EXAMPLES = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "examples", "tasks"
)
# The paper's seven benchmarks under their lm-eval names (need the Hugging Face Hub or its cache).
PAPER_TASKS = ("mmlu", "hellaswag", "arc_challenge", "arc_easy", "piqa", "winogrande", "commonsense_qa")


def task_manager(include_path=None, tasks=None):
    """An lm-eval `TaskManager` that also knows the local tasks (`examples/tasks` and
    `include_path`). lm-eval's ~15k built-in task files take ~10 s to index, so they are
    left out when every name in `tasks` is local."""
    from lm_eval.tasks import TaskManager

    paths = [include_path] if isinstance(include_path, str) else list(include_path or [])
    if os.path.isdir(EXAMPLES):
        paths.append(EXAMPLES)
    if tasks is not None and paths:
        local = TaskManager(include_path=paths, include_defaults=False)
        if all(name in local.all_tasks for name in _names(tasks)):
            return local
    return TaskManager(include_path=paths or None)


def _names(tasks) -> list[str]:
    return [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]


def check_tasks(tasks, manager) -> list[str]:
    """The task names, each known to `manager` (else a clear error with close matches)."""
    names = _names(tasks)
    if not names:
        fail("tasks", tasks, "name at least one lm-eval task")
    known = set(manager.all_tasks)
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3)
            fail(
                "tasks",
                name,
                "is not an lm-eval task"
                + (
                    f"; did you mean {', '.join(close)}?"
                    if close
                    else " (local tasks: a YAML + JSONL folder under examples/tasks)"
                ),
            )
    return names


def run_tasks(lm, tasks, *, include_path=None, limit=None, num_fewshot=None, seed: int = 1234, manager=None) -> dict:
    """Run lm-eval tasks on `lm` (a `PHDLM`); returns {task: {metric: value}}. `manager`: a
    `task_manager(...)` already built (indexing lm-eval's tasks takes seconds)."""
    import lm_eval

    manager = manager or task_manager(include_path, tasks)
    names = check_tasks(tasks, manager)
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=names,
        task_manager=manager,
        limit=limit,
        num_fewshot=num_fewshot,
        log_samples=False,
        bootstrap_iters=0,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=None,
        fewshot_random_seed=seed,
    )
    metrics = {
        task: {
            k.split(",")[0]: v
            for k, v in res.items()
            if isinstance(v, (int, float)) and not k.startswith("alias") and "stderr" not in k
        }
        for task, res in out["results"].items()
    }
    return metrics
