"""Pilot: the paired seed spread of PHD-2 vs vanilla at d_model 256 (issue 20):

    python -m experiments.pilot [--dry-run] [--seeds=0,1,2] [--steps=N] [--root=DIR]
        [--results=DIR] [--config.KEY=VALUE ...]

The settings and claims are in experiments/studies.py; the options in experiments/cli.py.
"""

import os
import sys

if __package__ in (None, ""):  # python experiments/pilot.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("pilot"))
