"""Train a PHD model.  python train.py [--config=configs/default.py[:NAME]] [--config.key=value ...] [--workdir=DIR]

The default trains a small byte-level PHD-CSWA-2-16-32 on Shakespeare in a few minutes on a
CPU, then prints a sample. Rerunning with the same --workdir resumes from its latest
checkpoint. The program is `phd_jax.train.cli` (also the `phd-train` console script).
"""

if __name__ == "__main__":  # first, before JAX is imported (phd_jax/hostmem.py says why)
    from phd_jax.hostmem import reexec_with_tuned_malloc

    reexec_with_tuned_malloc()

from absl import app, flags

from phd_jax.train import cli

flags.adopt_module_key_flags(cli)  # --help lists the program's flags

if __name__ == "__main__":
    app.run(cli.main, flags_parser=cli.parse_flags)
