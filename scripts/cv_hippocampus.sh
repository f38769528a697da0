#!/usr/bin/env bash
# A real 5-fold cross-validation on ../shared/data/hippocampus with a small epoch budget (default: the
# AGUNet experiment, 2 epochs per fold; 697 s on the 2-core VM). Resumable: run it again to
# continue. Extra arguments are Hydra overrides, e.g. experiment=hippocampus_unet trainer.max_epochs=4.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
VENV="${SEG_VENV:-.venv}"
RUN="${SEG_CV_RUN:-$PWD/outputs/cv_hippocampus}"
start=$(date +%s)
"$VENV/bin/seg-kfold" experiment=hippocampus_agunet cv.folds=5 cv.run_dir="$RUN" hydra.run.dir="$RUN/hydra" \
  trainer.max_epochs=2 trainer.max_time=null trainer.check_val_every_n_epoch=2 "$@"
echo "5-fold CV finished in $(( $(date +%s) - start )) s: $RUN/report.md"
