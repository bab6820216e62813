"""Command-line programs: `phd-train` and `phd-eval` (console scripts of the installed package).

    phd-train [--config=configs/default.py[:NAME]] [--config.key=value ...] [--workdir=DIR]
    phd-eval  --workdir=DIR [--step=N] [--loss] [--tasks=...] [--generate=PROMPT] [--report]

The programs are `phd_jax.train.cli` and `phd_jax.evaluation.cli` (absl flags defined at
import, `main(argv)`, `parse_flags(argv)` for absl's `flags_parser`); `train.py` and `eval.py`
run the same modules. A relative `--config` path that does not exist in the working
directory is looked up in the checkout the package was installed from (editable installs,
Colab clones); a wheel installed elsewhere needs an explicit `--config=FILE`.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from phd_jax.hostmem import reexec_with_tuned_malloc

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = "configs/default.py"
_HELP_FLAGS = ("--help", "-?", "--helpshort", "--helpfull")


def config_path(path: str) -> str:
    """`path` (FILE or FILE:ARG) if FILE exists or is absolute, else the same relative path in
    the checkout this package lives in, if there is one there."""
    file, sep, arg = path.partition(":")
    if os.path.isabs(file) or os.path.exists(file):
        return path
    in_repo = os.path.join(_REPO_ROOT, file)
    return in_repo + sep + arg if os.path.exists(in_repo) else path


def _run(main, usage: str, argv=None, flags_parser=None):
    """`app.run(main)` with a usage text for console scripts (whose `__main__` has no docstring)
    and exit status 0 for --help (absl exits 1)."""
    argv = list(sys.argv if argv is None else argv)
    main_module = sys.modules.get("__main__")
    if main_module is not None and not main_module.__doc__:
        main_module.__doc__ = usage
    # absl's --help lists the flags of the module named argv[0]; the console script defines none.
    for name, module_flags in flags.FLAGS.flags_by_module_dict().items():
        if name != argv[0] and name.startswith("phd_jax"):
            for flag in module_flags:
                flags.FLAGS.register_key_flag_for_module(argv[0], flag)
    kwargs = {"flags_parser": flags_parser} if flags_parser is not None else {}
    try:
        app.run(main, argv=argv, **kwargs)
    except SystemExit as e:
        if e.code == 1 and any(a in _HELP_FLAGS for a in argv[1:]):
            raise SystemExit(0) from None
        raise


def train_main(argv=None):
    """Entry point of `phd-train` (the program is `phd_jax.train.cli`, as for train.py)."""
    if argv is None:  # the console script (never when called with arguments, e.g. from a test)
        reexec_with_tuned_malloc()
    from phd_jax.train import cli

    return _run(cli.main, cli.__doc__, argv, cli.parse_flags)


def eval_main(argv=None):
    """Entry point of `phd-eval` (the program is `phd_jax.evaluation.cli`, as for eval.py)."""
    if argv is None:  # the console script (never when called with arguments, e.g. from a test)
        reexec_with_tuned_malloc()
    from phd_jax.evaluation import cli

    return _run(cli.main, cli.__doc__, argv, getattr(cli, "parse_flags", None))
