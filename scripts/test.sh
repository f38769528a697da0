#!/usr/bin/env bash
# Run the default (fast) test tier in the project's environment, installing it first if needed.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow` for the slow tier.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh test
VENV="${SEG_VENV:-.venv}"
if [ "$#" -eq 0 ]; then set -- -m "not slow and not gpu"; fi
exec "$VENV/bin/python" -m pytest "$@"
