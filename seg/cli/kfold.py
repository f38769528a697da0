"""``seg-kfold experiment=... cv.folds=5``: k-fold cross-validation with out-of-fold evaluation and a model bundle.

The runner is :func:`seg.run.kfold.kfold`; this is its thin Hydra wrapper.
"""

from __future__ import annotations

import sys

from seg.cli.common import hydra_main


@hydra_main("kfold")
def main(cfg) -> None:
    from seg.run.kfold import kfold

    s = kfold(cfg)
    print(f"CV run: {cfg.cv.get('run_dir') or cfg.paths.output_dir}")
    print(f"fold-mean foreground Dice: {s.get('fold_dice_mean')}  (report.md, cv_summary.json, model/)")


if __name__ == "__main__":
    sys.exit(main())
