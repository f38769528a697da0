#!/usr/bin/env bash
# The main job: install, generate synthetic data, train a small 3D U-Net, predict unseen cases with the
# trained model bundle, evaluate them. Offline; about 6-9 minutes on a 2-core CPU (plus the first install).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
VENV="${SEG_VENV:-.venv}"
export PATH="$PWD/$VENV/bin:$PATH"
RUN="outputs/demo/$(date +%Y-%m-%d_%H-%M-%S)"
DATA="data/synthetic"
UNSEEN="data/synthetic_unseen"

echo "[demo] 1/4 synthetic dataset in $DATA"
if [ ! -f "$DATA/dataset.json" ]; then
  seg-synth -o "$DATA" -n 24 --seed 0 --shape 64 64 64
fi
seg-check-data "$DATA"

echo "[demo] 2/4 training: seg-train experiment=synthetic_unet (run folder $RUN)"
seg-train experiment=synthetic_unet data.root="$DATA" hydra.run.dir="$RUN" "$@"

echo "[demo] 3/4 predicting 4 unseen cases with the run's model bundle: seg-predict"
if [ ! -f "$UNSEEN/dataset.json" ]; then
  seg-synth -o "$UNSEEN" -n 4 --seed 1000 --shape 64 64 64
fi
seg-predict -i "$UNSEEN/imagesTr" -o "$RUN/predictions" -m "$RUN/model" --png -q

echo "[demo] 4/4 evaluating them: seg-eval"
seg-eval -p "$RUN/predictions" -l "$UNSEEN/labelsTr" -d "$UNSEEN/dataset.json" -o "$RUN/predictions" --no-surface

python - "$RUN" <<'PY'
import json, sys
run = sys.argv[1]
m = json.load(open(f"{run}/metrics.json"))
s = json.load(open(f"{run}/predictions/summary.json"))
d = s["mean"]["1"]["Dice"]
print()
print(f"[demo] run folder      : {run}")
print(f"[demo] resolved config : {run}/config.yaml")
print(f"[demo] checkpoints     : {run}/checkpoints/ (best.ckpt on val/dice, last.ckpt for resuming)")
print(f"[demo] logs            : {run}/tensorboard (tensorboard --logdir {run}), {run}/csv/metrics.csv")
print(f"[demo] model bundle    : {run}/model (seg-predict -m {run}/model)")
print(f"[demo] predictions     : {run}/predictions (masks, per-case JSON and PNG, summary.csv, summary.json)")
print(f"[demo] validation Dice : best {m['val/dice_best']:.3f}, last {m.get('val/dice', float('nan')):.3f} "
      f"({m['val_cases']} validation cases, {m['epochs']} epochs, {m['seconds']:.0f} s)")
print(f"[demo] unseen cases    : mean Dice {d:.3f} over {len(s['metric_per_case'])} cases" if d is not None else "[demo] unseen cases: no lesion")
PY
