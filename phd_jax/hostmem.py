"""Host memory for XLA:CPU: reuse each step's temporaries instead of faulting them in again.

XLA:CPU takes every step's temporaries from glibc's malloc on its worker threads. glibc serves
a large block there with a fresh `mmap` and gives it back on `free`, so every step the kernel
faults in and zeroes all of its temporaries again: about 1M page faults and 20-25% of a PHD-4
train step on a 2-core host (issue 10's model, T = 512). Transparent huge pages alone cut
the faults about 400x, but each 2 MiB fault may then stall on memory compaction once the
host's memory is fragmented (3 s of a 5.5 s step with eight models in one process).

The cure is to keep what was freed: one malloc arena (`arena_max=1`), no `mmap` for large
blocks (`mmap_max=0`) and no trimming of the heap (`trim_threshold`), so after the first
steps every temporary is reused memory (no faults, no zeroing), and, where the kernel leaves
transparent huge pages to `madvise` (glibc >= 2.35), the heap on huge pages (`hugetlb=1`:
fewer TLB misses). The cost: the process's memory stays at its high-water mark, and a
process that runs several large programs in turn (eight train steps of different models,
interleaved) may hold the sum of their temporaries rather than the largest
(`release_free_memory` between phases gives back what is free).

glibc reads its tunables (`GLIBC_TUNABLES`) only when a process starts, so the command-line
entry points (train.py, eval.py, `phd-train`, `phd-eval`, the benchmarks and experiments)
execute themselves again once with them set (`tune_command_line`). Library users (a notebook,
their own script) call `tune()` once, before JAX runs anything: it sets the same thresholds at
run time with `mallopt` (not `hugetlb`, which has no `mallopt`). It is not called on import: a
tuned heap keeps its high-water mark, which matters in a memory-bound notebook. Measured on a
2-core host (a jitted program with a 64 MiB temporary, minor page faults per call): untuned
1.08M; re-executed with the tunables 0.8 (38 with `hugetlb`, on THP pages); `tune()` before
JAX is imported 3.3k-16k, varying from run to run (66-330x fewer than untuned, but thousands of
times more than the re-execution, so the command lines keep re-executing); `tune()` after JAX
ran no gain at all (XLA's worker threads have their own arenas by then, whose large blocks
glibc maps and unmaps whatever `mmap_max` says).
Set `PHD_JAX_TUNE_MALLOC=0` to opt out of both; tunables the user set already are kept.
"""

from __future__ import annotations

import os
import sys

ENV = "GLIBC_TUNABLES"
OPT_OUT = "PHD_JAX_TUNE_MALLOC"
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"
# name -> (value, the first glibc that reads it)
TUNABLES = {
    "glibc.malloc.arena_max": ("1", (2, 26)),
    "glibc.malloc.mmap_max": ("0", (2, 26)),
    "glibc.malloc.trim_threshold": (str(1 << 62), (2, 26)),
    "glibc.malloc.hugetlb": ("1", (2, 35)),  # only where THP is left to madvise
}


def _glibc_version() -> tuple[int, int] | None:
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
        major, minor = version.split(".")[:2]
        return (int(major), int(minor)) if name == "glibc" else None
    except (AttributeError, ValueError, OSError):  # not Linux, or not glibc (musl)
        return None


def _thp_mode(path: str = THP_SETTING) -> str | None:
    """The kernel's THP mode: the bracketed word of `always [madvise] never`."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else None


def _set_tunables(value: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in value.split(":") if "=" in item)


def tuned_env(environ, thp_mode: str | None, glibc: tuple[int, int] | None) -> dict | None:
    """`environ` with the malloc tunables added, or None when there is nothing to add: opted
    out, not glibc (or too old), or every tunable already set (by the user or an earlier exec).
    `hugetlb` only where the kernel's THP mode is `madvise` (`always` gives huge pages anyway,
    `never` none)."""
    if environ.get(OPT_OUT, "1") == "0" or glibc is None:
        return None
    current = environ.get(ENV, "")
    present = _set_tunables(current)
    add = [
        f"{name}={value}"
        for name, (value, since) in TUNABLES.items()
        if name not in present and glibc >= since and (name != "glibc.malloc.hugetlb" or thp_mode == "madvise")
    ]
    if not add:
        return None
    env = dict(environ)
    env[ENV] = ":".join(([current] if current else []) + add)
    return env


def describe(environ=None) -> str:
    """How this process's malloc is set up, for benchmark reports."""
    present = _set_tunables((os.environ if environ is None else environ).get(ENV, ""))
    tuned = [
        f"{name.rsplit('.', 1)[1]}={present[name] if len(present[name]) < 8 else 'max'}"
        for name in TUNABLES
        if name in present
    ]
    if _tuned_at_run_time:
        tuned.append("mallopt(" + ",".join(k.lower()[2:] for k, v in MALLOPT.items() if v[2] not in present) + ")")
    mode = _thp_mode()
    return (f"malloc tuned: {' '.join(tuned)}" if tuned else "malloc untuned") + f", THP {mode or 'unknown'}"


# mallopt(3) parameters (glibc's malloc.h) -> (value, the tunable that sets the same threshold).
# mallopt takes a C int; a trim threshold of -1 turns trimming off (mallopt(3)).
MALLOPT = {
    "M_ARENA_MAX": (-8, 1, "glibc.malloc.arena_max"),
    "M_MMAP_MAX": (-4, 0, "glibc.malloc.mmap_max"),
    "M_TRIM_THRESHOLD": (-1, -1, "glibc.malloc.trim_threshold"),  # -1: never trim (mallopt(3))
}
_tuned_at_run_time = False


def tune() -> bool:
    """Tune this process's malloc now, with glibc's `mallopt`: one arena, no `mmap` for large
    blocks, no trimming (the module docstring says why). Returns True if it did.

    For library users (a notebook, a script): call it once, early (before JAX runs its first
    computation, so that XLA's threads start with the single arena). Not called on import:
    a tuned heap keeps its high-water mark (`release_free_memory` gives back what is free),
    which matters in a memory-bound notebook. Does nothing when `PHD_JAX_TUNE_MALLOC=0`, on a
    C library other than glibc, or for a threshold set in `GLIBC_TUNABLES` already."""
    global _tuned_at_run_time
    if os.environ.get(OPT_OUT, "1") == "0" or _glibc_version() is None:
        return False
    import ctypes  # noqa: PLC0415

    present = _set_tunables(os.environ.get(ENV, ""))
    libc = ctypes.CDLL(None)
    done = False
    for param, value, tunable in MALLOPT.values():
        if tunable not in present:
            done = libc.mallopt(param, value) == 1 or done
    _tuned_at_run_time = _tuned_at_run_time or done
    return done


def release_free_memory() -> bool:
    """Give the heap's free memory back to the system (glibc's `malloc_trim(0)`); True if any
    was. A tuned process keeps what it freed, so its memory is the high-water mark of every
    program it ran: call this between phases that run different programs (e.g. sizes)."""
    if _glibc_version() is None:
        return False
    import ctypes  # noqa: PLC0415

    return bool(ctypes.CDLL(None).malloc_trim(0))


def tune_command_line() -> None:
    """What the command-line programs (`phd-train`, `phd-eval`, train.py, eval.py) call first,
    before JAX is imported: `reexec_with_tuned_malloc()`, and `tune()` where the program cannot
    be executed again (`python -c`, stdin)."""
    reexec_with_tuned_malloc()
    tune()


def reexec_with_tuned_malloc() -> None:
    """Execute this program again with the malloc tunables (see the module docstring); returns
    only when there is nothing to do. Call it first thing in a command-line `__main__`."""
    argv = list(getattr(sys, "orig_argv", []))
    if len(argv) < 2 or argv[1] in ("-", "-i"):  # stdin or interactive: cannot run it again
        return
    env = tuned_env(os.environ, _thp_mode(), _glibc_version())
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable] + argv[1:], env)
