#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install seg with the pinned versions.
# Usage: source-free; call as `bash scripts/setup_env.sh [EXTRAS]`, e.g. `bash scripts/setup_env.sh test`.
# Env: SEG_VENV (default .venv), SEG_PYTHON (default python3),
#      SEG_TORCH_INDEX (optional pip index for torch, e.g. the CPU wheel index on a machine without a local wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${SEG_VENV:-.venv}"
PY="${SEG_PYTHON:-python3}"
EXTRAS="${1:-}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment in $VENV"
  "$PY" -m venv "$VENV"
fi
stamp_file="$VENV/.seg_env_stamp"
stamp="$(cat pyproject.toml requirements/constraints.txt | sha256sum | cut -c1-16)-${EXTRAS}"
if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ]; then
  exit 0
fi
echo "[setup] installing seg${EXTRAS:+[$EXTRAS]} with pinned versions (requirements/constraints.txt)"
"$VENV/bin/python" -m pip install -q --upgrade pip
torch_args=()
if [ -n "${SEG_TORCH_INDEX:-}" ]; then torch_args=(--extra-index-url "$SEG_TORCH_INDEX"); fi
# torch first and alone, pinned, so nothing can pull an unpinned (CUDA, multi-GB) build.
"$VENV/bin/python" -m pip install -q "${torch_args[@]}" -c requirements/constraints.txt torch
"$VENV/bin/python" -m pip install -q -c requirements/constraints.txt -e ".${EXTRAS:+[$EXTRAS]}"
echo "$stamp" > "$stamp_file"
