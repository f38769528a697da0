"""Losses from MONAI, by name, with deep-supervision weighting."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.losses import DeepSupervisionLoss, DiceCELoss, DiceLoss

from seg.nn.layers import check_option

LOSSES = ("dice_ce", "dice", "paper_dice", "ce")


def build_loss(name: str = "dice_ce", include_background: bool = False, batch: bool = False, lambda_ce: float = 1.0, lambda_dice: float = 1.0) -> nn.Module:
    """A segmentation loss on logits ``[B, K, *S]`` and integer labels ``[B, 1, *S]``.

    ``paper_dice`` is the AGUNet paper's loss: class-averaged soft Dice without background, squared
    denominators (V-Net form), smoothing 1.
    """
    check_option("loss.name", name, LOSSES)
    if name == "dice_ce":
        return DiceCELoss(to_onehot_y=True, softmax=True, include_background=include_background, batch=batch,
                          lambda_ce=lambda_ce, lambda_dice=lambda_dice)
    if name == "dice":
        return DiceLoss(to_onehot_y=True, softmax=True, include_background=include_background, batch=batch)
    if name == "paper_dice":
        return DiceLoss(to_onehot_y=True, softmax=True, include_background=False, squared_pred=True,
                        smooth_nr=1.0, smooth_dr=1.0, batch=batch)
    return _CE()


class _CE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ce = nn.CrossEntropyLoss()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.ce(logits, target[:, 0].long())


def deep_supervision_weights(mode: str | Sequence[float], n: int) -> list[float]:
    """Per-head weights, normalised to sum 1: "equal", "exp" (nnU-Net's 1/2^i) or an explicit list."""
    if isinstance(mode, str):
        check_option("deep_supervision_weights", mode, ("equal", "exp"))
        w = [1.0] * n if mode == "equal" else [0.5**i for i in range(n)]
    else:
        w = [float(x) for x in mode][:n]
        if len(w) < n:
            raise ValueError(f"deep_supervision_weights has {len(w)} values for {n} heads")
    s = sum(w)
    return [x / s for x in w]


class SegLoss(nn.Module):
    """Applies ``loss`` to a tensor, or to a list of deep-supervision outputs with per-head weights.

    Labels are resized to each head with nearest-neighbour interpolation (MONAI's DeepSupervisionLoss).
    """

    def __init__(self, loss: nn.Module, ds_weights: str | Sequence[float] = "equal") -> None:
        super().__init__()
        self.loss = loss
        self.ds_weights = ds_weights

    def forward(self, out: torch.Tensor | list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if isinstance(out, torch.Tensor):
            return self.loss(out, target)
        w = deep_supervision_weights(self.ds_weights, len(out))
        return DeepSupervisionLoss(self.loss, weights=w)(out, target)
