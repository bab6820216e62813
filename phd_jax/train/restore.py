"""Restoring that survives damaged checkpoints, and only damage.

    restored = restore_newest(directory, steps, try_restore, log)   # (step, value, skipped)
    move_aside(directory, step)                                      # checkpoints/<step>.damaged

A checkpoint is *damaged* when its files are missing or truncated, its metadata is unreadable,
or orbax never finished writing it (an item without `commit_success.txt`, no commit timestamp
in `_CHECKPOINT_METADATA`). A resume skips such a step with a one-line notice and falls back
to the next newest. A *transient* error (an I/O error that a retry may cure, permissions, out
of memory) is never taken for damage: it is retried, then raised as a `RestoreError`, with
nothing skipped. Nothing here writes to the workdir except `move_aside`, which the trainer
calls only once a restore succeeded: the damaged step is renamed (on an object store: copied,
then removed) to `<step>.damaged`, never deleted, so that it neither counts toward
`keep_checkpoints` nor blocks a new save of that step.

Paths are `etils.epath.Path`s: the same code serves a local disk and an object store.
Several processes: every one tries the same step (process 0's list of steps), and the
outcomes are gathered, so that all of them restore the same step or all skip it.
"""

from __future__ import annotations

import errno
import json
import re
import time
from collections.abc import Callable

import jax
import numpy as np
from etils import epath

ITEMS = ("state", "data")  # the items of every checkpoint (phd_jax.train.checkpoint.save)
COMMIT_FILE = "commit_success.txt"  # orbax writes it into an item once the item is complete
STEP_METADATA = "_CHECKPOINT_METADATA"
TREE_METADATA = "_METADATA"  # orbax's description of a saved tree (the `state` item)
DAMAGED_SUFFIX = ".damaged"
RESTORE_ATTEMPTS = 3  # a transient error: tries in all before it is reported
RETRY_DELAY_S = 2.0  # seconds before the second try, doubled for each further one
MAX_REASON_CHARS = 200

# errno values of errors a retry may cure, or that are not the checkpoint's fault.
TRANSIENT_ERRNOS = {
    errno.EIO,
    errno.EAGAIN,
    errno.EINTR,
    errno.ETIMEDOUT,
    errno.ENOMEM,
    errno.EBUSY,
    errno.EACCES,
    errno.EPERM,
    errno.ECONNRESET,
    errno.ECONNREFUSED,
    errno.ECONNABORTED,
    errno.ENETUNREACH,
    errno.EHOSTUNREACH,
    errno.ESTALE,
    errno.EMFILE,
    errno.ENFILE,
}
# The same causes as TensorStore / XLA / cloud storage spell them in their messages.
TRANSIENT_PATTERN = re.compile(
    r"\b(UNAVAILABLE|DEADLINE_EXCEEDED|PERMISSION_DENIED|RESOURCE_EXHAUSTED|ABORTED|UNAUTHENTICATED)\b"
    r"|out of memory|Input/output error|Permission denied|Connection reset|timed out",
    re.IGNORECASE,
)

OK, DAMAGED, TRANSIENT = 0, 1, 2  # the outcome of one try, as gathered across processes


class RestoreError(RuntimeError):
    """No checkpoint could be restored: every one is damaged, or a transient error persisted.
    The message is one line; nothing in the workdir was changed."""


def _chain(e: BaseException):
    """`e` and every exception it wraps (causes, contexts, exception groups, exception args)."""
    seen, todo = set(), [e]
    while todo:
        x = todo.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        yield x
        todo += [x.__cause__, x.__context__, *getattr(x, "exceptions", ())]
        todo += [a for a in getattr(x, "args", ()) if isinstance(a, BaseException)]


def is_transient(e: BaseException) -> bool:
    """An error a retry may cure or that is not the checkpoint's fault (I/O error, permissions,
    out of memory, an unreachable store), anywhere in the chain of wrapped errors."""
    for x in _chain(e):
        if isinstance(x, (MemoryError, PermissionError, TimeoutError, ConnectionError)):
            return True
        if isinstance(x, OSError) and x.errno in TRANSIENT_ERRNOS:
            return True
        if not isinstance(x, OSError) and TRANSIENT_PATTERN.search(str(x)):
            return True
    return False


def describe(e: BaseException) -> str:
    """One short line for an error: its innermost informative cause (orbax wraps the real one,
    e.g. TensorStore's `OUT_OF_RANGE ... OCDBT`, in several layers)."""
    best = None
    for x in _chain(e):
        text = " ".join(str(x).split())
        if text and (best is None or isinstance(x, OSError) or re.search(r"\b[A-Z_]{6,}\b:", text)):
            best = (x, text)
            if isinstance(x, OSError) or re.search(r"\b[A-Z_]{6,}\b:", text):
                break
    x, text = best or (e, type(e).__name__)
    if isinstance(x, OSError) and x.strerror:
        text = f"{x.strerror}: {x.filename}" if x.filename else x.strerror
    text = f"{type(x).__name__}: {text}"
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 3] + "..."


def incomplete_reason(step_dir) -> str | None:
    """Why checkpoint `step_dir` is incomplete: orbax did not finish an item, or a metadata file
    is missing (None: every item was finalized). Cheap: a few small files, no array data."""
    step_dir = epath.Path(step_dir)
    try:
        meta = json.loads((step_dir / STEP_METADATA).read_text())
    except FileNotFoundError:
        return f"unfinished: no {STEP_METADATA}"
    except ValueError:
        return f"unfinished: {STEP_METADATA} is not JSON"
    if not isinstance(meta, dict) or not meta.get("commit_timestamp_nsecs"):
        return f"unfinished: {STEP_METADATA} has no commit timestamp"
    for item in ITEMS:
        if not (step_dir / item).is_dir():
            return f"its {item!r} item is missing"
        if not (step_dir / item / COMMIT_FILE).exists():
            return f"unfinished: its {item!r} item has no {COMMIT_FILE}"
    if not (step_dir / ITEMS[0] / TREE_METADATA).exists():
        return f"its {ITEMS[0]!r} item has no {TREE_METADATA} (the tree's metadata)"
    return None


# ---- several processes ---------------------------------------------------------------------------


def gather(value: int) -> list[int]:
    """`value` of every process (one process: just this one)."""
    if jax.process_count() == 1:
        return [value]
    from jax.experimental import multihost_utils

    return [int(v) for v in np.asarray(multihost_utils.process_allgather(np.int32(value))).ravel()]


def _process_0_steps(steps) -> list[int]:
    """Process 0's list of steps, on every process (stores may list differently for a moment)."""
    if jax.process_count() == 1:
        return list(steps)
    from jax.experimental import multihost_utils

    n = int(multihost_utils.broadcast_one_to_all(np.int32(len(steps))))
    if not n:
        return []
    padded = np.zeros(n, np.int64)
    padded[: min(n, len(steps))] = list(steps)[:n]
    return [int(s) for s in np.asarray(multihost_utils.broadcast_one_to_all(padded))]


def sync_processes(name: str):
    """Wait until every process got here (a no-op for one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


# ---- restoring -----------------------------------------------------------------------------------


def restore_newest(directory, steps, try_restore: Callable, log=print, workdir: str | None = None):
    """(step, try_restore(step), skipped) for the newest of `steps` that restores; `skipped`:
    the newer (step, reason) pairs found damaged, each announced in one line by `log`. None if
    `steps` is empty. Raises RestoreError if every step is damaged or a transient error
    persists for RESTORE_ATTEMPTS tries. Writes nothing."""
    directory = epath.Path(directory)
    where = workdir or str(directory)
    steps = sorted(_process_0_steps(sorted(steps)), reverse=True)
    if not steps:
        return None
    skipped = []
    for step in steps:
        reason = incomplete_reason(directory / str(step))
        value = None
        for attempt in range(RESTORE_ATTEMPTS):
            outcome, error = (DAMAGED, None) if reason else (OK, None)
            if not reason:
                try:
                    value = try_restore(step)
                except Exception as e:  # orbax raises many types; sorted out below
                    outcome, error = (TRANSIENT if is_transient(e) else DAMAGED), e
            outcomes = gather(outcome)
            if TRANSIENT in outcomes:
                if attempt + 1 < RESTORE_ATTEMPTS:
                    time.sleep(RETRY_DELAY_S * 2**attempt)
                    continue
                cause = describe(error) if error is not None else "a transient error on another process"
                raise RestoreError(
                    f"cannot restore checkpoint {step} of workdir {where} ({RESTORE_ATTEMPTS} tries): {cause}; "
                    f"this looks transient (I/O, permissions, memory), so nothing was skipped or changed: "
                    f"fix the cause and run the same command again"
                ) from error
            if DAMAGED in outcomes and not reason:
                reason = describe(error) if error is not None else "damaged as another process reads it"
            break
        if not reason:
            return step, value, skipped
        log(f"skipping damaged checkpoint {step} ({reason}); trying the next newest")
        skipped.append((step, reason))
    causes = "; ".join(f"step {s}: {r}" for s, r in skipped)
    raise RestoreError(
        f"no checkpoint of workdir {where} restores (steps {', '.join(str(s) for s, _ in skipped)}): {causes}; "
        f"nothing was changed"
    )


def move_aside(directory, step: int):
    """Move `directory/<step>` out of the checkpoint manager's way, to `<step>.damaged` (then
    `<step>.damaged-2`, ...): renamed on a local disk, copied and then removed on an object
    store. Never deletes a file before its copy exists. Returns the new path."""
    directory = epath.Path(directory)
    src = directory / str(step)
    dst = directory / f"{step}{DAMAGED_SUFFIX}"
    n = 1
    while dst.exists():
        n += 1
        dst = directory / f"{step}{DAMAGED_SUFFIX}-{n}"
    if "://" not in str(directory):  # a local file system: one atomic rename
        src.rename(dst)
        return dst
    _copy_tree(src, dst)
    src.rmtree()
    return dst


def _copy_tree(src: epath.Path, dst: epath.Path):
    dst.mkdir(parents=True, exist_ok=True)
    for child in src.iterdir():
        if child.is_dir():
            _copy_tree(child, dst / child.name)
        else:
            child.copy(dst / child.name)
