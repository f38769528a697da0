"""Learning-rate schedules keyed on the fraction of training done, not on epochs.

``ProgressLR`` multiplies each base learning rate by ``factor(f)``, f in [0, 1] the fraction of training
done, asked of the LightningModule after every optimiser step: the fraction of ``trainer.max_time``
elapsed when a time budget is set (Lightning's ``Timer``, whose elapsed time survives a resume), else the
fraction of the estimated optimiser steps (``max_epochs`` x batches). So a run that the budget ends has
completed its schedule: the learning rate in the final checkpoint is ``factor(1)``. Written here because
PyTorch's and Lightning's schedulers count steps or epochs only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from enum import Enum

import torch

from seg.config import check_option


class Kind(str, Enum):
    POLY = "poly"  # (1 - f) ** power  (nnU-Net's)
    COSINE = "cosine"  # end + (1 - end) * (1 + cos(pi f)) / 2
    CONSTANT = "constant"


def lr_factor(
    f: float, kind: str = "poly", power: float = 0.9, warmup: float = 0.0, warmup_start: float = 0.1, end: float = 0.0
) -> float:
    """The schedule's multiplier at training fraction ``f``: a linear warm-up from ``warmup_start`` over
    the first ``warmup`` of training, then the decay over the rest, reaching ``end`` (poly: 0) at f = 1."""
    f = min(max(float(f), 0.0), 1.0)
    if warmup > 0 and f < warmup:
        return warmup_start + (1.0 - warmup_start) * f / warmup
    g = (f - warmup) / (1.0 - warmup) if warmup > 0 else f
    kind = check_option("scheduler.kind", kind, Kind)
    if kind == Kind.POLY:
        return end + (1.0 - end) * (1.0 - g) ** power
    if kind == Kind.COSINE:
        return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * g))
    return 1.0


class ProgressLR(torch.optim.lr_scheduler.LRScheduler):
    """``lr = base_lr * lr_factor(progress())``; ``progress`` is set by the module before training.

    Args:
        optimizer: the optimiser.
        kind, power, warmup, warmup_start, end: see :func:`lr_factor`.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        kind: str = "poly",
        power: float = 0.9,
        warmup: float = 0.0,
        warmup_start: float = 0.1,
        end: float = 0.0,
    ) -> None:
        check_option("scheduler.kind", kind, Kind)
        if not 0.0 <= warmup < 1.0:
            raise ValueError(f"scheduler.warmup must be in [0, 1), got {warmup}")
        self.kw = dict(kind=kind, power=power, warmup=warmup, warmup_start=warmup_start, end=end)
        self.progress: Callable[[], float] = lambda: 0.0
        super().__init__(optimizer)

    def factor(self) -> float:
        return lr_factor(self.progress(), **self.kw)

    def get_lr(self) -> list[float]:
        k = self.factor()
        return [base * k for base in self.base_lrs]

    def state_dict(self) -> dict:
        return {k: v for k, v in super().state_dict().items() if k != "progress"}
