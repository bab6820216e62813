"""phd_jax.hostmem: the malloc tunables the command-line programs run with."""

import json
import os
import subprocess
import sys

import pytest

from phd_jax import hostmem

ALL = {"glibc.malloc.arena_max", "glibc.malloc.mmap_max", "glibc.malloc.trim_threshold", "glibc.malloc.hugetlb"}


def _names(env):
    return set(hostmem._set_tunables(env[hostmem.ENV]))


def test_tuned_env_adds_every_tunable_once():
    env = hostmem.tuned_env({"PATH": "/bin"}, "madvise", (2, 36))
    assert env["PATH"] == "/bin" and _names(env) == ALL
    assert hostmem.tuned_env(env, "madvise", (2, 36)) is None  # an executed program does not run again


def test_tuned_env_keeps_what_the_user_set():
    env = hostmem.tuned_env({hostmem.ENV: "glibc.malloc.arena_max=4:glibc.rtld.nns=2"}, "madvise", (2, 36))
    tunables = hostmem._set_tunables(env[hostmem.ENV])
    assert tunables["glibc.malloc.arena_max"] == "4" and tunables["glibc.rtld.nns"] == "2"
    assert env[hostmem.ENV].count("arena_max") == 1 and set(tunables) == ALL | {"glibc.rtld.nns"}


@pytest.mark.parametrize(
    "thp, glibc, expected",
    [
        ("always", (2, 36), ALL - {"glibc.malloc.hugetlb"}),  # huge pages without asking
        ("never", (2, 36), ALL - {"glibc.malloc.hugetlb"}),
        (None, (2, 36), ALL - {"glibc.malloc.hugetlb"}),  # no THP setting readable
        ("madvise", (2, 31), ALL - {"glibc.malloc.hugetlb"}),  # glibc before the hugetlb tunable
    ],
)
def test_tuned_env_adds_huge_pages_only_where_they_are_asked_for(thp, glibc, expected):
    assert _names(hostmem.tuned_env({}, thp, glibc)) == expected


@pytest.mark.parametrize(
    "environ, glibc",
    [
        ({hostmem.OPT_OUT: "0"}, (2, 36)),  # opted out
        ({}, None),  # musl, macOS
        ({}, (2, 17)),
    ],
)  # too old
def test_tuned_env_leaves_the_environment_alone(environ, glibc):
    assert hostmem.tuned_env(environ, "madvise", glibc) is None


# A program as the command-line entry points start: tune malloc first, then run a jitted
# function with a 64 MiB temporary a few times and count the page faults of the last calls.
CHILD = """
import json, resource, sys
from phd_jax.hostmem import tune_command_line
tune_command_line()
import os
import jax, jax.numpy as jnp
f = jax.jit(lambda x: (jnp.sin(x) @ jnp.cos(x)).sum())
x = jnp.ones((4096, 4096), jnp.float32)
for _ in range(3):
    f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    f(x).block_until_ready()
print(json.dumps(dict(faults=(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3,
                      tunables=os.environ.get("GLIBC_TUNABLES", ""))))
"""


def _child(code=CHILD, **env):
    """Run `code` as a program (its last stdout line is JSON) without the caller's tunables."""
    base = {k: v for k, v in os.environ.items() if k not in (hostmem.ENV, hostmem.OPT_OUT)}
    r = subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(
    hostmem._glibc_version() is None or hostmem._glibc_version() < (2, 26), reason="malloc tunables need glibc >= 2.26"
)
def test_tuned_programs_reuse_their_temporaries():
    """The reason for the module: untuned, each call faults its temporaries in again (XLA:CPU's
    worker threads get them from fresh mmaps); tuned, the freed memory is reused."""
    untuned, tuned = _child(**{hostmem.OPT_OUT: "0"}), _child()
    assert untuned["tunables"] == "" and _names({hostmem.ENV: tuned["tunables"]}) >= ALL - {"glibc.malloc.hugetlb"}
    assert untuned["faults"] > 4000  # 64 MiB in 4 KiB pages is 16384 faults per call
    assert tuned["faults"] < untuned["faults"] / 50, (tuned, untuned)


# A library user's program: `hostmem.tune()` (mallopt, in this process) before JAX is imported.
CHILD_TUNE = CHILD.replace(
    "from phd_jax.hostmem import tune_command_line\ntune_command_line()", "from phd_jax.hostmem import tune\ntune()"
)


@pytest.mark.skipif(hostmem._glibc_version() is None, reason="mallopt is glibc's")
def test_tune_in_process_reuses_temporaries_too():
    """`tune()` without a second start of the interpreter: the page faults per call drop, though
    less than with the re-execution (measured 66-330x fewer than untuned on a 2-core host, from
    one run to the next, vs ~1M -> ~1 for the re-execution): > 10x here."""
    assert "tune()" in CHILD_TUNE
    untuned, tuned = _child(CHILD_TUNE, **{hostmem.OPT_OUT: "0"}), _child(CHILD_TUNE)
    assert untuned["tunables"] == tuned["tunables"] == ""  # no re-execution
    assert untuned["faults"] > 4000
    assert tuned["faults"] < untuned["faults"] / 10, (tuned, untuned)


def test_tune_respects_the_opt_out_and_other_c_libraries(monkeypatch):
    monkeypatch.setenv(hostmem.OPT_OUT, "0")
    assert hostmem.tune() is False
    monkeypatch.delenv(hostmem.OPT_OUT)
    monkeypatch.setattr(hostmem, "_glibc_version", lambda: None)  # musl, macOS
    assert hostmem.tune() is False


# A tuned program frees a 256 MiB array: the heap keeps it (no trimming) until it is released.
CHILD_TRIM = """
import json, os
from phd_jax.hostmem import reexec_with_tuned_malloc, release_free_memory
reexec_with_tuned_malloc()
import numpy as np
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
x = np.ones(32 << 20)
x.sum()
del x
held = rss()
released = release_free_memory()
print(json.dumps(dict(held=held, after=rss(), released=released,
                      tunables=os.environ.get("GLIBC_TUNABLES", ""))))
"""


@pytest.mark.skipif(
    hostmem._glibc_version() is None or hostmem._glibc_version() < (2, 26) or not os.path.exists("/proc/self/statm"),
    reason="malloc tunables need glibc >= 2.26; RSS is read from /proc",
)
def test_release_free_memory_gives_back_what_a_tuned_heap_keeps():
    out = _child(CHILD_TRIM)
    assert "trim_threshold" in out["tunables"] and out["released"] is True
    assert out["held"] - out["after"] > 200 << 20, out  # most of the 256 MiB comes back
