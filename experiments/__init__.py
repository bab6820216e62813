"""Reproduction studies of the PHD paper's claims, run with the project's own trainer.

One command per study (each a resumable sweep; `--dry-run` prints the grid and its time):
    python -m experiments.loss_vs_k        loss vs K at matched original tokens
    python -m experiments.window_chunk     window and chunk ablations at K = 2
    python -m experiments.flop_matched     PHD-K vs vanilla at equal training FLOPs
    python -m experiments.all              all three, each shared setting once
    python -m experiments.pilot            the pilot that sized the main study (docs/pilot.md)
    python -m experiments.when_pays        the main study: when does PHD pay? (d_model 256)
    python -m experiments.kprime           K' = 1 .. K+2 of every trained PHD run: loss and decode speed
    python -m experiments.report           tables, plots and verdicts -> docs/reproduction.md
    python -m experiments.timing           the timed runs behind the time estimates
See docs/reproduction.md.
"""
