"""``seg-train``: train one model from a composed Hydra config (``conf/train.yaml``).

The runner is :func:`seg.run.train.train`; this is its thin Hydra wrapper.
"""

from __future__ import annotations

import sys

from seg.cli.compose import hydra_main


@hydra_main("train")
def main(cfg) -> float | None:
    """Train; returns ``val/dice_best`` (what a Hydra sweeper, e.g. Optuna's, maximises)."""
    from seg.run.learned import say
    from seg.run.train import train

    result = train(cfg)
    if result.model_bundle is not None:
        print(f"next: seg-predict -m {result.model_bundle} -i INPUT -o OUTPUT")
    if result.metrics.get("learned_nothing"):
        say(result.metrics["val/dice_best"], "best validation Dice", result.model_bundle)
    return result.metrics.get("val/dice_best")


if __name__ == "__main__":
    sys.exit(main())
