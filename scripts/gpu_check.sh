#!/usr/bin/env bash
# One command for a machine with a GPU: the gpu-marked tests, the local-attention kernels against flex and
# SDPA, the training-throughput table (fp32/bf16, worker and device data pipelines) and a 2-minute planned
# hippocampus run (planned vs made steps, Dice). Each step is time-boxed; a failure is reported and the next
# step still runs; one summary table at the end. Under 8 minutes on one H200.
#
# Usage: bash scripts/gpu_check.sh
# Env:
#   SEG_PYTHON       a python with a CUDA torch (e.g. python3 on a GPU machine without a package registry);
#                    unset: the project's venv (scripts/setup_env.sh, SEG_TORCH_INDEX for a CUDA build)
#   SEG_WHEELS       a folder of wheels for what SEG_PYTHON lacks (monai, nibabel, hydra, ...), made on a
#                    machine with a registry by `python scripts/gpu_wheels.py download DIR`; installed
#                    without an index into .gpu_site (only the distributions SEG_PYTHON does not have)
#   SEG_SHARED_DATA  the real data (its hippocampus/ for the planned run; synthetic data otherwise)
#   GPU_BUDGET       the planned run's budget (default 2m)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-outputs/gpu_check}"
mkdir -p "$OUT"
if [ -z "${SEG_PYTHON:-}" ]; then
  bash scripts/setup_env.sh test || { echo "[gpu] set-up failed"; exit 1; }
  PY="${SEG_VENV:-.venv}/bin/python"
else
  PY="$SEG_PYTHON"
fi
if [ -n "${SEG_WHEELS:-}" ]; then
  echo "[gpu] installing what $PY lacks from $SEG_WHEELS into .gpu_site (no index)"
  missing=$("$PY" scripts/gpu_wheels.py missing "$SEG_WHEELS")
  [ -n "$missing" ] && timeout 180 "$PY" -m pip install -q --no-index --no-deps --target .gpu_site $missing
  export PYTHONPATH="$PWD/.gpu_site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
declare -a NAMES STATUS SECS
step() {  # step NAME TIMEOUT_S CMD...
  local name=$1 limit=$2; shift 2
  echo; echo "[gpu] == $name"
  local t0=$SECONDS
  timeout "$limit" "$@"; local rc=$?
  local st="ok"; [ $rc -eq 124 ] && st="TIMEOUT (${limit}s)"; [ $rc -ne 0 ] && [ $rc -ne 124 ] && st="FAILED (rc $rc)"
  NAMES+=("$name"); STATUS+=("$st"); SECS+=($((SECONDS - t0)))
}
HIPPO="${SEG_SHARED_DATA:-../shared/data}/hippocampus"
if [ ! -f "$HIPPO/dataset.json" ]; then
  HIPPO="$OUT/synthetic"
  [ -f "$HIPPO/dataset.json" ] || "$PY" -m seg.cli.synth -o "$HIPPO" -n 40 --shape 64 64 64 >/dev/null
fi
step "CUDA present" 60 "$PY" -c "import torch, sys; ok = torch.cuda.is_available(); \
print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name() if ok else 'no CUDA device'); sys.exit(0 if ok else 1)"
step "gpu-marked tests" 150 "$PY" -m pytest -q -m gpu -p no:cacheprovider
step "local attention: triton vs flex vs SDPA" 90 "$PY" scripts/bench_local_attn3d.py --gpu-only --sizes 16 24 32
step "training: fp32/bf16 x worker/device pipelines" 150 "$PY" scripts/bench_train.py --device cuda --table pipeline \
  --data "$([ "$HIPPO" = "$OUT/synthetic" ] && echo synthetic || echo hippocampus)" --steps 40 --repeats 1
step "planned run: seg-plan --device cuda, then seg-train" 240 bash -c "
  '$PY' -m seg.cli.plan '$HIPPO' --device cuda --budget ${GPU_BUDGET:-2m} -o '$OUT/plan.yaml' -q &&
  '$PY' -m seg.cli.train plan='$OUT/plan.yaml' hydra.run.dir='$OUT/run' logger=csv &&
  '$PY' - '$OUT' <<'PY'
import json, sys, yaml
out = sys.argv[1]
plan, m = yaml.safe_load(open(f'{out}/plan.yaml')), json.load(open(f'{out}/run/metrics.json'))
planned, made = plan['planned']['steps_in_budget'], m['global_step']
print(f'[gpu] planned run: {planned} steps planned, {made} made ({made / planned:.0%}), {m[\"seconds\"]:.0f} s '
      f'of {plan[\"planned\"][\"budget_seconds\"]} s, val/dice {m.get(\"val/dice\", float(\"nan\")):.4f} '
      f'(best {m[\"val/dice_best\"]:.4f}), pipeline {plan[\"data\"][\"pipeline\"]}, {plan[\"trainer\"][\"precision\"]}')
PY"
echo
echo "[gpu] summary"
printf '  %-50s %-18s %6s\n' "step" "status" "s"
for i in "${!NAMES[@]}"; do printf '  %-50s %-18s %6s\n' "${NAMES[$i]}" "${STATUS[$i]}" "${SECS[$i]}"; done
for s in "${STATUS[@]}"; do [ "$s" = "ok" ] || exit 1; done
