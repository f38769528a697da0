#!/usr/bin/env bash
# The main job: install, generate synthetic data, plan it for a 6-minute budget on this machine (seg-plan),
# train the plan, predict unseen cases with the trained model bundle, evaluate them. Offline; about
# 8 minutes on a 2-core CPU (plus the first install). DEMO_BUDGET sets the training budget (default 6m).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
VENV="${SEG_VENV:-.venv}"
export PATH="$PWD/$VENV/bin:$PATH"
RUN="outputs/demo/$(date +%Y-%m-%d_%H-%M-%S)"
DATA="data/synthetic"
UNSEEN="data/synthetic_unseen"

BUDGET="${DEMO_BUDGET:-6m}"
PLAN="$RUN/plan.yaml"
echo "[demo] 1/5 synthetic dataset in $DATA"
if [ ! -f "$DATA/dataset.json" ]; then
  seg-synth -o "$DATA" -n 24 --seed 0 --shape 64 64 64
fi
seg-check-data "$DATA"

echo "[demo] 2/5 planning: seg-plan $DATA --budget $BUDGET (fingerprint, timing probe on this CPU)"
seg-plan "$DATA" --budget "$BUDGET" -o "$PLAN" -q

echo "[demo] 3/5 training the plan: seg-train plan=$PLAN (run folder $RUN)"
seg-train plan="$PLAN" hydra.run.dir="$RUN" "$@"

echo "[demo] 4/5 predicting 4 unseen cases with the run's model bundle: seg-predict"
if [ ! -f "$UNSEEN/dataset.json" ]; then
  seg-synth -o "$UNSEEN" -n 4 --seed 1000 --shape 64 64 64
fi
seg-predict -i "$UNSEEN/imagesTr" -o "$RUN/predictions" -m "$RUN/model" --png -q

echo "[demo] 5/5 evaluating them: seg-eval"
seg-eval -p "$RUN/predictions" -l "$UNSEEN/labelsTr" -d "$UNSEEN/dataset.json" -o "$RUN/predictions" --no-surface

python - "$RUN" "$PLAN" <<'PY'
import json, sys
import yaml
run, plan_path = sys.argv[1], sys.argv[2]
plan = yaml.safe_load(open(plan_path))
m = json.load(open(f"{run}/metrics.json"))
s = json.load(open(f"{run}/predictions/summary.json"))
d = s["mean"]["1"]["Dice"]
print()
d_, t_ = plan["data"], plan["trainer"]
print(f"[demo] plan            : {plan_path}: patch {d_['patch_size']}, spacing {d_['spacing']} mm, "
      f"filters {plan['model']['net']['filters']}, batch {d_['batch_size']}x{d_['num_samples']}, {t_['precision']}, "
      f"budget {t_['max_time']} ({plan['planned']['steps_in_budget']} steps planned)"
      + (f", {members} ensemble members of that budget each" if (members := plan.get("ensemble", {}).get("members", 1)) > 1 else ""))
print(f"[demo] run folder      : {run}")
print(f"[demo] resolved config : {run}/config.yaml")
ck = f"{run}/checkpoints/" if members == 1 else f"{run}/member_<m>/checkpoints/"
print(f"[demo] checkpoints     : {ck} (best.ckpt on val/dice, last.ckpt for resuming)")
lg = run if members == 1 else f"{run}/member_<m>"
print(f"[demo] logs            : {run}/train.log, {lg}/tensorboard (tensorboard --logdir {run}), {lg}/csv/metrics.csv, {run}/progress.png")
print(f"[demo] model bundle    : {run}/model (seg-predict -m {run}/model)")
print(f"[demo] predictions     : {run}/predictions (masks, per-case JSON and PNG, summary.csv, summary.json)")
split = json.load(open(f"{run}/splits.json"))[0]["val"]
import nibabel as nib, numpy as np
empty = sum(not np.asanyarray(nib.load(f"data/synthetic/labelsTr/{c}.nii.gz").dataobj).any() for c in split)
print(f"[demo] validation Dice : best {m['val/dice_best']:.3f}, last {m.get('val/dice', float('nan')):.3f} "
      f"({m['val_cases']} validation cases, {m['epochs']} epochs, {m['global_step']} steps, {m['seconds']:.0f} s)")
if empty:
    print(f"[demo]                   {empty} of the {m['val_cases']} validation cases have no lesion and do not count; "
          "with so few, the figure moves from run to run: the unseen cases below are the demo's result")
print(f"[demo] unseen cases    : mean Dice {d:.3f} over {len(s['metric_per_case'])} cases" if d is not None else "[demo] unseen cases: no lesion")
PY
