"""Evaluate a train.py checkpoint; the model comes from the run's saved config, never from flags.

    python eval.py --workdir=runs/default --loss --tasks=shakespeare_mc --generate="ROMEO."
    python eval.py --checkpoint=runs/default/checkpoints/300 --report
    python eval.py --workdir=runs/default --loss --config.data.source=text:notes/*.txt
    python eval.py --workdir=runs/default --loss --config.model.attention=dense   # inference-only: said

Prints a table and writes WORKDIR/eval/<step>.json. The program is `phd_jax.evaluation.cli`
(also the `phd-eval` console script); the logic is `phd_jax.evaluation.run`.
"""

if __name__ == "__main__":  # first, before JAX is imported (phd_jax/hostmem.py says why)
    from phd_jax.hostmem import reexec_with_tuned_malloc

    reexec_with_tuned_malloc()

from absl import app, flags

from phd_jax.evaluation import cli
from phd_jax.evaluation.cli import main

flags.adopt_module_key_flags(cli)  # --help lists the program's flags

if __name__ == "__main__":
    app.run(main)
