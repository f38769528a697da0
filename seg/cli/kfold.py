"""``seg-kfold experiment=... cv.folds=5``: k-fold cross-validation with out-of-fold evaluation and a model bundle.

The runner is :func:`seg.run.kfold.kfold`; this is its thin Hydra wrapper.
"""

from __future__ import annotations

import sys

from seg.cli.compose import hydra_main


@hydra_main("kfold")
def main(cfg) -> None:
    from pathlib import Path

    from seg.run.kfold import closing_line, kfold

    s = kfold(cfg)
    run = Path(cfg.cv.get("run_dir") or cfg.paths.output_dir)
    print(closing_line(s, run))
    print(f"next: seg-predict -m {run / 'model'} -i INPUT -o OUTPUT")
    if s.get("learned_nothing") is not None:
        from seg.run.learned import say

        say(s["learned_nothing"], "fold-mean out-of-fold Dice", run / "model")


if __name__ == "__main__":
    sys.exit(main())
