"""Console scripts: `phd-train` and `phd-eval` (and `train.py` / `eval.py`, which call them).

    phd-train [--config=configs/default.py[:NAME]] [--config.key=value ...] [--workdir=DIR]
    phd-eval  --workdir=DIR [--step=N] [--loss] [--tasks=...] [--generate=PROMPT] [--report]

The programs are `phd_jax.train.cli` and `phd_jax.evaluation.cli` (`define_flags()`,
`main(argv)`, and `parse_flags(argv)` for absl's `flags_parser`). The wrappers here tune
malloc (`phd_jax.hostmem.tune_command_line`), define the program's flags, and run it under
absl with its usage text. Nothing in phd_jax imports this module.
"""

from __future__ import annotations

import errno
import io
import os
import re
import sys

_HELP_FLAGS = ("--help", "-?", "--helpshort", "--helpfull")
# A write that fails for want of room: the disk, a quota, or a file-size limit (`ulimit -f`).
_EDQUOT = getattr(errno, "EDQUOT", errno.ENOSPC)
_NO_SPACE = {errno.ENOSPC, errno.EFBIG, _EDQUOT}
DEBUG_ENV = "PHD_JAX_DEBUG"  # PHD_JAX_DEBUG=1: a failing command shows its traceback (as --debug)


def debug_requested(argv=None) -> bool:
    """`--debug` on the command line (parsed or not yet) or PHD_JAX_DEBUG=1 in the environment."""
    if os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes"):
        return True
    from absl import flags

    if "debug" in flags.FLAGS and flags.FLAGS.is_parsed():
        return bool(flags.FLAGS.debug)
    args = sys.argv[1:] if argv is None else argv[1:]
    return any(a in ("--debug", "--debug=true", "--debug=1", "--debug=True") for a in args)


def _file_in_traceback(tb) -> str | None:
    """The name of the innermost open file a failing frame held (a write or decode error
    carries none): the file object, else a `path` / `filename` local."""
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        local = frame.f_locals
        for value in local.values():
            if isinstance(value, io.IOBase) and isinstance(getattr(value, "name", None), str):
                return value.name
        for name in ("path", "filename", "file", "fname"):
            if isinstance(local.get(name), str):
                return local[name]
    return None


def _flag_for(path: str, argv) -> str | None:
    """`--NAME=VALUE` of the command line's (or a default) path flag that `path` lies in or under."""
    from absl import flags

    target = os.path.abspath(os.path.expanduser(path))
    candidates = [a[2:].partition("=")[::2] for a in argv[1:] if a.startswith("--") and "=" in a]
    if flags.FLAGS.is_parsed():
        candidates += [(n, v) for n, v in flags.FLAGS.flag_values_dict().items() if isinstance(v, str)]
    best = None
    for name, value in candidates:
        if not value or name.startswith("config."):
            continue
        root = os.path.abspath(os.path.expanduser(value.partition(":")[0] if name == "config" else value))
        if (target == root or target.startswith(root.rstrip(os.sep) + os.sep)) and (
            best is None or len(root) > best[0]
        ):
            best = (len(root), f"--{name}={value}")
    return best and best[1]


def os_error_message(e: BaseException, argv=()) -> str:
    """One line for an operating-system or decoding error: the flag the path came from (if
    one), the cause, the file. `error: --workdir=/x/FILE/run: Not a directory: /x/FILE/run`."""
    if isinstance(e, UnicodeDecodeError):
        path = _file_in_traceback(e.__traceback__)
        cause = f"not UTF-8 text ({e.reason} at byte {e.start})"
    else:
        path = e.filename if isinstance(getattr(e, "filename", None), str) else None
        path = path or _file_in_traceback(e.__traceback__)
        cause = e.strerror or str(e) or type(e).__name__
        if getattr(e, "errno", None) in _NO_SPACE:
            cause = f"no space left on device or file size limit ({cause})"
    parts = [p for p in (path and _flag_for(path, argv), cause, path) if p]
    return ": ".join(parts)


# How TensorStore (orbax's array writer) and cloud clients spell an operating-system error.
_WRAPPED_ERRNO = re.compile(r"os_error_code='?(\d+)'?")
_WRAPPED_FILE = re.compile(r'(?:Failed writing|Error opening|Failed to open|file)[:\s]+"([^"]+)"')
_WRAPPED_TEXT = {"No space left on device": errno.ENOSPC, "File too large": errno.EFBIG, "Disk quota exceeded": _EDQUOT}


def os_error_cause(e: BaseException) -> OSError | None:
    """The operating-system error inside `e`, however wrapped: an `OSError` in its chain of
    causes, or one that a library spelled into its message (orbax's writes raise TensorStore's
    `ValueError('... Failed writing: "FILE": ... [os_error_code=\'27\']')`). None if there is none."""
    seen, todo, wrapped = set(), [e], None
    while todo:
        x = todo.pop(0)
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, OSError) and x.errno is not None:
            return x
        text = str(x)
        m = _WRAPPED_ERRNO.search(text)
        code = int(m.group(1)) if m else next((c for t, c in _WRAPPED_TEXT.items() if t in text), None)
        if wrapped is None and code:
            f = _WRAPPED_FILE.findall(text)
            wrapped = OSError(code, os.strerror(code), f[-1] if f else None)
        todo += [x.__cause__, x.__context__, *getattr(x, "exceptions", ())]
        todo += [a for a in getattr(x, "args", ()) if isinstance(a, BaseException)]
    return wrapped


class _LibraryErrorLogs:
    """A logging filter: drop the error logs of orbax and asyncio. An orbax background write that
    fails logs its traceback, then re-raises the error in the main thread, where the command
    line reports it in one line; --debug / PHD_JAX_DEBUG=1 keep the logs."""

    @staticmethod
    def filter(record) -> bool:
        import logging

        return not (record.levelno >= logging.ERROR and ("/orbax/" in record.pathname or record.name == "asyncio"))


def _filter_library_logs():
    import logging

    for name in ("absl", "asyncio"):
        logging.getLogger(name).addFilter(_LibraryErrorLogs)
    # TensorStore completes the writes of a failed orbax save after orbax closed their event
    # loop, and reports each callback's "Event loop is closed" as an unraisable exception.
    hook = sys.unraisablehook

    def unraisablehook(unraisable):
        value = unraisable.exc_value
        if not (isinstance(value, RuntimeError) and str(value) == "Event loop is closed"):
            hook(unraisable)

    sys.unraisablehook = unraisablehook


def quiet_libraries():
    """Keep libraries' own error logs and shutdown noise out of a one-line failure (orbax logs
    the traceback of a failed background write before it re-raises it; its event loops complain
    while the interpreter exits). --debug / PHD_JAX_DEBUG=1 keep them."""
    import logging
    import threading

    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.FATAL)
    logging.getLogger().setLevel(logging.CRITICAL)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    sys.unraisablehook = lambda unraisable: None
    threading.excepthook = lambda args: None


def _run(program, argv=None):
    """`app.run(program.main)` with the program's usage text (a console script's `__main__` has
    no docstring) and exit status 0 for --help (absl exits 1)."""
    from absl import app, flags

    argv = list(sys.argv if argv is None else argv)
    main_module = sys.modules.get("__main__")
    if main_module is not None and not main_module.__doc__:
        main_module.__doc__ = program.__doc__
    if "debug" not in flags.FLAGS:
        flags.DEFINE_bool(
            "debug", False, f"A failing command shows its full traceback, not one line (also {DEBUG_ENV}=1)."
        )
    try:
        program.define_flags()
    except (OSError, UnicodeDecodeError) as e:
        _os_error(e, argv)
    # absl's --help lists the flags of the module named argv[0]; the console script defines none.
    for name, module_flags in flags.FLAGS.flags_by_module_dict().items():
        if name != argv[0] and name.startswith("phd_jax"):
            for flag in module_flags:
                flags.FLAGS.register_key_flag_for_module(argv[0], flag)
    parser = getattr(program, "parse_flags", None)
    if not debug_requested(argv):
        _filter_library_logs()
    try:
        app.run(program.main, argv=argv, **({"flags_parser": parser} if parser is not None else {}))
    except SystemExit as e:
        if e.code == 1 and any(a in _HELP_FLAGS for a in argv[1:]):
            raise SystemExit(0) from None
        raise
    except (OSError, UnicodeDecodeError) as e:  # a workdir below a file, permissions, a full disk
        _os_error(e, argv)
    except Exception as e:  # an OS error a library wrapped (a full disk under an orbax save)
        cause = os_error_cause(e)
        if cause is None:
            raise
        _os_error(cause, argv, e)


def _os_error(e: BaseException, argv, raised: BaseException | None = None):
    """One line on stderr and exit status 2 (as every other command-line error); --debug or
    PHD_JAX_DEBUG=1: the traceback (of `raised`, the error that wrapped `e`, if any)."""
    if debug_requested(argv):
        raise raised or e
    quiet_libraries()
    print(f"error: {os_error_message(e, argv)}", file=sys.stderr)
    raise SystemExit(2) from None


def train_main(argv=None):
    """`phd-train` and `python train.py`. `argv` given (e.g. a test): malloc is left as it is."""
    if argv is None:
        from phd_jax.hostmem import tune_command_line

        tune_command_line()
    from phd_jax.train import cli

    return _run(cli, argv)


def eval_main(argv=None):
    """`phd-eval` and `python eval.py`. `argv` given (e.g. a test): malloc is left as it is."""
    if argv is None:
        from phd_jax.hostmem import tune_command_line

        tune_command_line()
    from phd_jax.evaluation import cli

    return _run(cli, argv)


def __getattr__(name: str):
    if name in ("config_path", "DEFAULT_CONFIG"):  # before 0.2: configs/ of the checkout
        import warnings

        from phd_jax import configs

        warnings.warn(
            f"phd_jax.cli.{name} is deprecated: use phd_jax.configs.resolve / phd_jax.configs.DEFAULT",
            DeprecationWarning,
            2,
        )
        return configs.resolve if name == "config_path" else configs.DEFAULT
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
