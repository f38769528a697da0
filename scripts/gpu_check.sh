#!/usr/bin/env bash
# One command for a machine with a GPU: the gpu-marked tests and the GPU sections of the benchmarks,
# each step time-boxed, its failure reported and the next still run; one summary table at the end.
# Usage: bash scripts/gpu_check.sh        (installs the environment first, like the test command)
# Env: SEG_VENV (default .venv); SEG_TORCH_INDEX for a CUDA torch build (setup_env.sh).
# Budget: under 5 minutes on one GPU (tests ~1 min, attention bench ~1 min, training/prediction ~2 min).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh test || { echo "[gpu] set-up failed"; exit 1; }
PY="${SEG_VENV:-.venv}/bin/python"
declare -a NAMES STATUS SECS
step() {  # step NAME TIMEOUT_S CMD...
  local name=$1 limit=$2; shift 2
  echo; echo "[gpu] == $name"
  local t0=$SECONDS
  timeout "$limit" "$@"; local rc=$?
  local st="ok"; [ $rc -eq 124 ] && st="TIMEOUT (${limit}s)"; [ $rc -ne 0 ] && [ $rc -ne 124 ] && st="FAILED (rc $rc)"
  NAMES+=("$name"); STATUS+=("$st"); SECS+=($((SECONDS - t0)))
}
step "CUDA present" 60 "$PY" -c "import torch, sys; ok = torch.cuda.is_available(); \
print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name() if ok else 'no CUDA device'); sys.exit(0 if ok else 1)"
step "gpu-marked tests" 150 "$PY" -m pytest -q -m gpu -p no:cacheprovider
step "local attention: triton vs flex vs SDPA" 90 "$PY" scripts/bench_local_attn3d.py --gpu-only --sizes 16 24 32
step "training s/step fp32 and bf16 (bench_train)" 120 "$PY" scripts/bench_train.py --device cuda --steps 10 --repeats 1
echo
echo "[gpu] summary"
printf '  %-45s %-18s %6s\n' "step" "status" "s"
for i in "${!NAMES[@]}"; do printf '  %-45s %-18s %6s\n' "${NAMES[$i]}" "${STATUS[$i]}" "${SECS[$i]}"; done
for s in "${STATUS[@]}"; do [ "$s" = "ok" ] || exit 1; done
