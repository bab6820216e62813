"""Issue 21 at the command line: operating-system and decoding errors are one line naming the flag,
the file and the cause (exit status 2, no traceback; --debug / PHD_JAX_DEBUG=1 show it), and every
check of the config runs before the workdir is touched: a failing first run leaves nothing behind.

The edge's logic runs in-process; `train.py` itself runs as a subprocess only where the wiring
is the point (about 5 s each)."""

import errno
import os
import subprocess
import sys

import pytest
from data_helpers import random_documents, write_text_corpus

from phd_jax import ConfigError, ModelConfig
from phd_jax.cli import _os_error, os_error_message

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _listing(path):
    """Every file under `path` with its size and contents (the workdir "hash")."""
    out = {}
    for base, _, files in os.walk(path):
        for name in files:
            full = os.path.join(base, name)
            out[os.path.relpath(full, path)] = open(full, "rb").read()
    return out


# Runs a program under a file-size limit with SIGXFSZ ignored (both survive exec), so that writing
# past the limit raises EFBIG. A wrapper process, not `preexec_fn`: forking a JAX process (threads)
# and running Python in the child can deadlock.
LIMITED = (
    "import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
    "n = int(sys.argv[1]); resource.setrlimit(resource.RLIMIT_FSIZE, (n, n)); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])"
)


def _train(*args, file_size_limit=None, env=None):
    full_env = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", "PHD_JAX_DEBUG")}
    full_env.update(env or {}, GIT_OPTIONAL_LOCKS="0")
    prefix = [sys.executable] if file_size_limit is None else [sys.executable, "-c", LIMITED, str(file_size_limit)]
    return subprocess.run(
        [*prefix, "train.py", "--config=configs/tiny.py", "--progress=false", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=full_env,
    )


def _one_line_error(out) -> str:
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr[-3000:]
    return lines[0]


# ---- the edge's message, in-process -----------------------------------------------------------


def test_os_errors_name_the_flag_the_file_and_the_cause(tmp_path, capsys, monkeypatch):
    wd = str(tmp_path / "run")
    argv = ["train.py", "--config=configs/tiny.py", f"--workdir={wd}"]
    denied = PermissionError(errno.EACCES, "Permission denied", os.path.join(wd, "config.json"))
    assert os_error_message(denied, argv) == f"--workdir={wd}: Permission denied: {wd}/config.json"
    assert os_error_message(denied, ["train.py"]) == f"Permission denied: {wd}/config.json"  # no flag named it

    def write_full_disk(path):  # a write error carries no file name: the open file in the traceback gives it
        with open(path, "w") as f:
            f.write("{}")
            raise OSError(errno.ENOSPC, "No space left on device")

    os.makedirs(wd)
    with pytest.raises(OSError) as e:
        write_full_disk(os.path.join(wd, "metrics.jsonl"))
    assert os_error_message(e.value, argv) == (
        f"--workdir={wd}: no space left on device or file size limit (No space left on device): {wd}/metrics.jsonl"
    )

    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"caf\xe9 latin-1")
    with pytest.raises(UnicodeDecodeError) as e:
        with open(notes, encoding="utf-8") as f:  # the file object in the traceback names the file
            f.read()
    assert os_error_message(e.value, argv) == f"not UTF-8 text (invalid continuation byte at byte 3): {notes}"

    monkeypatch.delenv("PHD_JAX_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_:
        try:
            raise denied
        except OSError as err:
            _os_error(err, argv)
    assert exit_.value.code == 2
    assert capsys.readouterr().err == f"error: --workdir={wd}: Permission denied: {wd}/config.json\n"
    for debug_argv, env in ((argv + ["--debug"], None), (argv, "1")):  # --debug or PHD_JAX_DEBUG=1: the original
        if env:
            monkeypatch.setenv("PHD_JAX_DEBUG", env)
        with pytest.raises(PermissionError):
            try:
                raise denied
            except OSError as err:
                _os_error(err, debug_argv)


# ---- train.py ---------------------------------------------------------------------------------


def test_workdir_below_a_file_is_one_line_and_debug_shows_the_traceback(tmp_path):
    (tmp_path / "FILE").write_text("mine\n")
    wd = str(tmp_path / "FILE" / "run")
    line = _one_line_error(_train(f"--workdir={wd}"))
    assert line == f"error: --workdir={wd}: Not a directory: {wd}"
    out = _train(f"--workdir={wd}", "--debug")
    assert out.returncode != 0 and "Traceback" in out.stderr and "NotADirectoryError" in out.stderr
    assert _listing(tmp_path) == {"FILE": b"mine\n"}


def test_full_disk_is_one_line_and_a_failing_first_run_leaves_nothing(tmp_path):
    """A file-size limit (EFBIG, as a full disk's ENOSPC) while writing the run files: one line naming
    the flag, the file and the cause; the workdir the run created is gone again."""
    corpus = write_text_corpus(tmp_path / "txt", random_documents(12, seed=3, max_len=60))
    wd = str(tmp_path / "run")

    out = _train(
        f"--workdir={wd}",
        f"--config.data.source=text:{corpus}",
        f"--config.data.cache_dir={tmp_path / 'cache'}",
        "--config.sample_tokens=0",
        file_size_limit=2000,  # config.json (about 2.5 kB) does not fit, the small token cache does
    )
    line = _one_line_error(out)
    cause = "no space left on device or file size limit (File too large)"
    assert line.startswith(f"error: --workdir={wd}: {cause}: "), line
    assert line.endswith(f"{wd}/.config.json.tmp"), line
    assert not os.path.exists(wd)


def test_full_disk_under_an_orbax_save_is_one_line(tmp_path):
    """EFBIG inside orbax's asynchronous checkpoint write (TensorStore wraps it in a ValueError and
    orbax logs its tracebacks from background threads): still one line naming the flag, the
    cause and the file."""
    corpus = write_text_corpus(tmp_path / "txt", random_documents(12, seed=3, max_len=60))
    wd = str(tmp_path / "run")
    out = _train(
        f"--workdir={wd}",
        f"--config.data.source=text:{corpus}",
        f"--config.data.cache_dir={tmp_path / 'cache'}",
        "--config.num_steps=2",
        "--config.checkpoint_every=2",
        "--config.eval_every=2",
        "--config.eval_batches=1",  # the small corpus holds one validation batch
        "--config.sample_tokens=0",
        "--config.compilation_cache=",
        env={"JAX_ENABLE_COMPILATION_CACHE": "false"},  # no cache entry cut short by the limit
        file_size_limit=60_000,  # the run files fit, the checkpoint's array data does not
    )
    line = _one_line_error(out)
    cause = "no space left on device or file size limit (File too large)"
    assert line.startswith(f"error: --workdir={wd}: {cause}: {wd}/checkpoints/2.orbax-checkpoint-tmp/"), line


def test_wrapped_no_space_error_is_found_and_named(tmp_path):
    """ENOSPC spelled into a library's message (as TensorStore does), under two layers of wrapping."""
    from phd_jax.cli import os_error_cause

    wd = str(tmp_path / "run")
    data = f"{wd}/checkpoints/4.orbax-checkpoint-tmp/state/d/abc"
    inner = ValueError(
        f'OUT_OF_RANGE: Error writing "params.x/0" in OCDBT database: Failed writing: "{data}": '
        f"Failed to write 1000 bytes to file 16: No space left on device [os_error_code='28']"
    )
    outer = RuntimeError("Failed to run 4 Handler Commit operations")
    outer.__cause__ = inner
    found = os_error_cause(outer)
    assert (found.errno, found.filename) == (errno.ENOSPC, data)
    argv = ["train.py", f"--workdir={wd}"]
    assert os_error_message(found, argv) == (
        f"--workdir={wd}: no space left on device or file size limit (No space left on device): {data}"
    )
    assert os_error_cause(ValueError("OUT_OF_RANGE: Error reading OCDBT manifest")) is None


def test_backend_checks_run_before_the_workdir_is_touched(tmp_path):
    """attention=splash with the tiny config's 16-token tiles: refused by ModelConfig before anything
    is written (it used to fail inside splash after writing config.json)."""
    with pytest.raises(ConfigError, match=r"ModelConfig.block_q=16 is invalid: attention='splash' needs block_q"):
        ModelConfig(attention="splash", block_q=16, block_kv=128)
    with pytest.raises(ConfigError, match=r"ModelConfig.block_kv=64 is invalid: .*multiples of 128"):
        ModelConfig(attention="splash", block_q=128, block_kv=64)
    ModelConfig(attention="blocksparse", block_q=16, block_kv=16)  # the other backends take any tile
    wd = tmp_path / "run"
    wd.mkdir()
    (wd / "notes.txt").write_text("the user's own file\n")
    before = _listing(wd)
    line = _one_line_error(_train(f"--workdir={wd}", "--config.model.attention=splash"))
    assert line.startswith(
        "error: config.model.block_q=16 is invalid: attention='splash' needs block_q and block_kv that are "
        "multiples of 128 (got block_q=16, block_kv=16)"
    ), line
    assert _listing(wd) == before


def test_a_config_file_that_is_not_utf8_python_is_named(tmp_path, capsys, monkeypatch):
    from phd_jax.train import cli as train_cli

    monkeypatch.delenv("PHD_JAX_DEBUG", raising=False)
    bad = tmp_path / "mine.py"
    bad.write_bytes(b'NAME = "caf\xe9"\n')  # latin-1, not UTF-8
    try:
        compile(bad.read_bytes(), str(bad), "exec")  # as ml_collections' loader does
    except SyntaxError as e:
        error = ValueError(e)  # under a wrapper, as the flag parser re-raises it
    with pytest.raises(SystemExit) as exit_:
        train_cli._flag_error(error)
    assert exit_.value.code == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"error: --config={bad}: cannot load the config file: (unicode error) 'utf-8' codec"), line
    assert line.endswith("(line 1)") and "\n" not in line
