#!/usr/bin/env bash
# The main job: install, generate the synthetic dataset, train a small 3D U-Net, report where it went.
# Offline; about 5-8 minutes on a 2-core CPU (the first run also creates the environment).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
VENV="${SEG_VENV:-.venv}"
export PATH="$PWD/$VENV/bin:$PATH"
RUN="outputs/demo/$(date +%Y-%m-%d_%H-%M-%S)"
DATA="data/synthetic"

echo "[demo] 1/2 synthetic dataset in $DATA"
if [ ! -f "$DATA/dataset.json" ]; then
  seg-synth -o "$DATA" -n 24 --seed 0 --shape 64 64 64
fi
seg-check-data "$DATA"

echo "[demo] 2/2 training: seg-train experiment=synthetic_unet (run folder $RUN)"
seg-train experiment=synthetic_unet data.root="$DATA" hydra.run.dir="$RUN" "$@"

python - "$RUN" <<'PY'
import json, sys
run = sys.argv[1]
m = json.load(open(f"{run}/metrics.json"))
print()
print(f"[demo] run folder      : {run}")
print(f"[demo] resolved config : {run}/config.yaml")
print(f"[demo] checkpoints     : {run}/checkpoints/ (best.ckpt on val/dice, last.ckpt for resuming)")
print(f"[demo] logs            : {run}/tensorboard (tensorboard --logdir {run}), {run}/csv/metrics.csv")
print(f"[demo] metrics         : {run}/metrics.json")
print(f"[demo] validation Dice : best {m['val/dice_best']:.3f}, last {m.get('val/dice', float('nan')):.3f} "
      f"({m['val_cases']} validation cases, {m['epochs']} epochs, {m['seconds']:.0f} s)")
PY
