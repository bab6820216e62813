"""Evaluate a train.py checkpoint; the model comes from the run's saved config, never from flags.

    python eval.py --workdir=runs/default --loss --tasks=shakespeare_mc --generate="ROMEO."
    python eval.py --checkpoint=runs/default/checkpoints/300 --report
    python eval.py --workdir=runs/default --loss --config.data.source=text:notes/*.txt
    python eval.py --workdir=runs/default --loss --repeat=3   # a PHD-2 checkpoint run as PHD-3
    python eval.py --workdir=runs/default --loss --config.model.attention=dense   # inference-only: said

Prints a table and writes WORKDIR/eval/<step>.json. The same program as the `phd-eval` console
script (`phd_jax.evaluation.cli`); the logic is `phd_jax.evaluation.run`.
"""

if __name__ == "__main__":
    from phd_jax.cli import eval_main

    eval_main()
