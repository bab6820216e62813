"""Console scripts: `phd-train` and `phd-eval` (and `train.py` / `eval.py`, which call them).

    phd-train [--config=configs/default.py[:NAME]] [--config.key=value ...] [--workdir=DIR]
    phd-eval  --workdir=DIR [--step=N] [--loss] [--tasks=...] [--generate=PROMPT] [--report]

The programs are `phd_jax.train.cli` and `phd_jax.evaluation.cli` (`define_flags()`,
`main(argv)`, and `parse_flags(argv)` for absl's `flags_parser`). The wrappers here tune
malloc (`phd_jax.hostmem.tune_command_line`), define the program's flags, and run it under
absl with its usage text. Nothing in phd_jax imports this module.
"""

from __future__ import annotations

import sys

_HELP_FLAGS = ("--help", "-?", "--helpshort", "--helpfull")


def _run(program, argv=None):
    """`app.run(program.main)` with the program's usage text (a console script's `__main__` has
    no docstring) and exit status 0 for --help (absl exits 1)."""
    from absl import app, flags

    argv = list(sys.argv if argv is None else argv)
    main_module = sys.modules.get("__main__")
    if main_module is not None and not main_module.__doc__:
        main_module.__doc__ = program.__doc__
    program.define_flags()
    # absl's --help lists the flags of the module named argv[0]; the console script defines none.
    for name, module_flags in flags.FLAGS.flags_by_module_dict().items():
        if name != argv[0] and name.startswith("phd_jax"):
            for flag in module_flags:
                flags.FLAGS.register_key_flag_for_module(argv[0], flag)
    parser = getattr(program, "parse_flags", None)
    try:
        app.run(program.main, argv=argv, **({"flags_parser": parser} if parser is not None else {}))
    except SystemExit as e:
        if e.code == 1 and any(a in _HELP_FLAGS for a in argv[1:]):
            raise SystemExit(0) from None
        raise


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
