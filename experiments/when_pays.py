"""The main study: when does PHD pay? (issue 20; settings in experiments/studies.py WHEN_PAYS):

    python -m experiments.when_pays [--dry-run] [--seeds=0,1,2] [--steps=N] [--root=DIR]
        [--results=DIR] [--config.KEY=VALUE ...]

The settings and claims are in experiments/studies.py; the options in experiments/cli.py.
"""

import os
import sys

if __package__ in (None, ""):  # python experiments/when_pays.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("when_pays"))
