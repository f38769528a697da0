#!/usr/bin/env bash
# The README's test command: install the project's environment if needed, then lint (ruff), check the
# import layers (import-linter), and run the default (fast, CPU) test tier.
# Extra arguments go to pytest instead of the default tier, e.g. `bash scripts/test.sh -m slow`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh test
VENV="${SEG_VENV:-.venv}"
echo "[test] ruff check"
"$VENV/bin/ruff" check seg tests scripts
echo "[test] import-linter (layers, no import loops, plain-PyTorch ops and nn)"
"$VENV/bin/lint-imports" --no-cache
if [ "$#" -eq 0 ]; then set -- -m "not slow and not gpu"; fi
exec "$VENV/bin/python" -m pytest "$@"
