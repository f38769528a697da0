#!/usr/bin/env bash
# Train several hippocampus experiments one after the other at the same time budget and print their
# validation Dice side by side (fold 0 of the same seeded 5-fold split).
# Usage: bash scripts/compare_hippocampus.sh [MINUTES] [EXPERIMENT ...]
#   e.g. bash scripts/compare_hippocampus.sh 20 hippocampus_unet hippocampus_agunet hippocampus_daunet
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
VENV="${SEG_VENV:-.venv}"
MIN="${1:-20}"; shift || true
EXPS=("$@")
[ ${#EXPS[@]} -gt 0 ] || EXPS=(hippocampus_unet hippocampus_agunet hippocampus_daunet)
OUT="outputs/compare_hippocampus/$(date +%Y-%m-%d_%H-%M-%S)"
for e in "${EXPS[@]}"; do
  "$VENV/bin/seg-train" experiment="$e" trainer.max_time="$(printf "00:%02d:%02d:00" $((MIN / 60)) $((MIN % 60)))" hydra.run.dir="$OUT/$e"
done
"$VENV/bin/python" - "$OUT" "${EXPS[@]}" <<'PY'
import json, sys
out, exps = sys.argv[1], sys.argv[2:]
print(f"{'experiment':28s} {'val Dice':>9s} {'best':>7s} {'anterior':>9s} {'posterior':>10s} {'epochs':>7s}")
for e in exps:
    m = json.load(open(f"{out}/{e}/metrics.json"))
    print(f"{e:28s} {m['val/dice']:9.4f} {m['val/dice_best']:7.4f} {m.get('val/dice_anterior', float('nan')):9.4f} "
          f"{m.get('val/dice_posterior', float('nan')):10.4f} {m['epochs']:7d}")
PY
