"""A run that learned nothing says so.

A training or k-fold run whose final validation foreground Dice is under :data:`LEARNED_NOTHING_DICE` (a net
that predicts background everywhere scores 0; the demo's 2-minute net scores ~0.8) marks its bundle
(``model.yaml``: ``extra.learned_nothing``), so that seg-predict warns before using it, and its command ends
with a warning block and exit code 3 (:class:`~seg.errors.LearnedNothing`) after writing everything.
"""

from __future__ import annotations

import math
from pathlib import Path

from seg.errors import LearnedNothing

LEARNED_NOTHING_DICE = 0.05


def learned_nothing(dice: float | None) -> bool:
    return dice is not None and not math.isnan(dice) and dice < LEARNED_NOTHING_DICE


def nothing_record(dice: float, what: str) -> dict:
    """``model.yaml``'s ``learned_nothing`` entry: the Dice and what it measured (written with the bundle)."""
    return {"dice": round(float(dice), 4), "measured": what}


def warning(dice: float, what: str, bundle: str | Path | None) -> LearnedNothing:
    marked = f"its bundle {bundle} is marked so: seg-predict warns before using it" if bundle else "no bundle"
    return LearnedNothing(
        f"WARNING this run learned nothing: {what} {dice:.4f} < {LEARNED_NOTHING_DICE} (all background scores 0)\n"
        f"WARNING {marked}\n"
        "WARNING train longer (trainer.max_time) or plan for the budget (seg-plan DATA --budget 20m); exit code 3"
    )


def say(dice: float, what: str, bundle: str | Path | None) -> None:
    """End a command that learned nothing: raise the warning block (exit 3), or, inside a Hydra multirun (a
    sweep's job, whose failure would stop the sweep), log it and let the job end."""
    import logging

    from hydra.core.hydra_config import HydraConfig

    e = warning(dice, what, bundle)
    if HydraConfig.initialized() and HydraConfig.get().mode.name == "MULTIRUN":
        for line in str(e).splitlines():
            logging.getLogger("seg").warning("%s", line.removeprefix("WARNING "))
        return
    raise e
