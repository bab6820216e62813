"""Stopping cleanly on SIGTERM (preemption) or a first Ctrl-C, from the moment training starts.

with Preemption() as stop:
    ...
    if stop.agreed():   # this or any other process was signalled: save this step, return
"""

from __future__ import annotations

import signal

import jax

from phd_jax.train.restore import gather


class Preemption:
    """SIGTERM (preemption) or a first Ctrl-C sets a flag; the loop saves a checkpoint at the
    current step and returns. A second Ctrl-C interrupts at once (the last checkpoint stays)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = None  # the name of the signal that asked to stop
        self._old = {}

    def __enter__(self):
        for sig in self.SIGNALS:
            try:
                if signal.getsignal(sig) is not signal.SIG_IGN:  # e.g. SIGINT in a background job
                    self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. some notebooks): no handler
                pass
        return self

    def _handle(self, signum, frame):
        self.requested = signal.Signals(signum).name
        if signum == signal.SIGINT:  # a second Ctrl-C behaves as usual
            signal.signal(signal.SIGINT, self._old.get(signal.SIGINT, signal.default_int_handler))

    def agreed(self) -> str | None:
        """The signal's name if this or any other process was asked to stop (every process
        then saves the same step: a save is collective). One process: no communication."""
        if jax.process_count() > 1:
            anywhere = max(gather(int(self.requested is not None)))
            if anywhere and self.requested is None:
                self.requested = "a signal to another process"
        return self.requested

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
