#!/usr/bin/env bash
# The README's test command: install the project's environment if needed, then lint (ruff), check the
# import layers (import-linter), and run the default (fast, CPU) test tier.
# Extra arguments go to pytest instead of the default tier, e.g. `bash scripts/test.sh -m slow`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh test
# the independent DICOM checker the SEG tests run (Debian's dicom3tools): installed where apt can, else skipped
if ! command -v dciodvfy >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "[test] installing dicom3tools (dciodvfy) for the DICOM SEG tests"
  (apt-get install -y -q dicom3tools >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 \
    && apt-get install -y -q dicom3tools >/dev/null 2>&1; }) || echo "[test] no dicom3tools: those checks skip"
fi
VENV="${SEG_VENV:-.venv}"
echo "[test] ruff check"
"$VENV/bin/ruff" check seg tests scripts
echo "[test] import-linter (layers, no import loops, plain-PyTorch ops and nn)"
"$VENV/bin/lint-imports" --no-cache
if [ "$#" -eq 0 ]; then
  # the default tier in parallel (pytest-xdist): one worker per core, at most 4, each test file in one worker;
  # tests/conftest.py shares the cores out as torch threads. Arguments given run as given (serially).
  workers="$("$VENV/bin/python" -c 'from seg.config import available_cores; print(min(4, available_cores()))')"
  set -- -m "not slow and not gpu"
  if [ "$workers" -gt 1 ]; then set -- "$@" -n "$workers" --dist loadfile; fi
fi
exec "$VENV/bin/python" -m pytest "$@"
