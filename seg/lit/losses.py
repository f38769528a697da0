"""Losses from MONAI, by name, with deep-supervision weighting."""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.losses import DeepSupervisionLoss, DiceCELoss, DiceLoss
from monai.networks.utils import one_hot

from seg.config import check_option


class Loss(str, Enum):
    DICE_CE = "dice_ce"
    DICE = "dice"
    PAPER_DICE = "paper_dice"
    CE = "ce"


class DSWeights(str, Enum):
    EQUAL = "equal"
    EXP = "exp"


class DSLabelMode(str, Enum):
    NEAREST = "nearest"
    AREA = "area"


def build_loss(
    name: str = "dice_ce",
    include_background: bool = False,
    batch: bool = False,
    lambda_ce: float = 1.0,
    lambda_dice: float = 1.0,
    soft_target: bool = False,
) -> nn.Module:
    """A segmentation loss on logits ``[B, K, *S]`` and integer labels ``[B, 1, *S]``, or, with
    ``soft_target``, (soft) one-hot targets ``[B, K, *S]``.

    ``paper_dice`` is the AGUNet paper's loss: class-averaged soft Dice without background, squared
    denominators (V-Net form), smoothing 1.
    """
    check_option("loss.name", name, Loss)
    onehot = not soft_target
    if name == "dice_ce":
        return DiceCELoss(
            to_onehot_y=onehot,
            softmax=True,
            include_background=include_background,
            batch=batch,
            lambda_ce=lambda_ce,
            lambda_dice=lambda_dice,
        )
    if name == "dice":
        return DiceLoss(to_onehot_y=onehot, softmax=True, include_background=include_background, batch=batch)
    if name == "paper_dice":
        return DiceLoss(
            to_onehot_y=onehot,
            softmax=True,
            include_background=False,
            squared_pred=True,
            smooth_nr=1.0,
            smooth_dr=1.0,
            batch=batch,
        )
    return _CE(soft_target)


class _CE(nn.Module):
    def __init__(self, soft_target: bool = False) -> None:
        super().__init__()
        self.soft_target = soft_target

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.soft_target:
            return F.cross_entropy(logits, target)
        return F.cross_entropy(logits, target[:, 0].long())


def deep_supervision_weights(mode: str | Sequence[float], n: int) -> list[float]:
    """Per-head weights, normalised to sum 1: "equal", "exp" (nnU-Net's 1/2^i) or an explicit list."""
    if isinstance(mode, str):
        mode = check_option("deep_supervision_weights", mode, DSWeights)
        w = [1.0] * n if mode == "equal" else [0.5**i for i in range(n)]
    else:
        w = [float(x) for x in mode][:n]
        if len(w) < n:
            raise ValueError(f"deep_supervision_weights has {len(w)} values for {n} heads")
    s = sum(w)
    if s <= 0 or min(w) < 0:
        raise ValueError(f"deep_supervision_weights must be non-negative with a positive sum, got {w}")
    return [x / s for x in w]


class SegLoss(nn.Module):
    """The configured loss on a tensor, or on a list of deep-supervision outputs with per-head weights.

    Labels reach each head either by nearest-neighbour resizing of the label map (MONAI's
    DeepSupervisionLoss) or, with ``ds_label_mode="area"``, as the one-hot label averaged over each
    head voxel's footprint (soft targets that keep small structures present at coarse heads).

    Args:
        loss: options of :func:`build_loss`.
        ds_weights: "equal", "exp" or explicit per-head weights (normalised to sum 1).
        ds_label_mode: "nearest" or "area".
    """

    def __init__(
        self, loss: dict | None = None, ds_weights: str | Sequence[float] = "equal", ds_label_mode: str = "nearest"
    ) -> None:
        super().__init__()
        cfg = dict(loss or {})
        self.loss = build_loss(**cfg)
        self.ds_weights = ds_weights
        self.ds_label_mode = check_option("ds_label_mode", ds_label_mode, DSLabelMode)
        self.soft_loss = build_loss(**cfg, soft_target=True) if ds_label_mode == "area" else None

    def forward(self, out: torch.Tensor | list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if isinstance(out, torch.Tensor):
            return self.loss(out, target)
        w = deep_supervision_weights(self.ds_weights, len(out))
        if self.ds_label_mode == "nearest":
            return DeepSupervisionLoss(self.loss, weights=w)(out, target)
        onehot = one_hot(target.long(), out[0].shape[1]).float()
        total = 0.0
        for wi, o in zip(w, out):
            t = onehot if o.shape[2:] == onehot.shape[2:] else F.interpolate(onehot, size=o.shape[2:], mode="area")
            total = total + wi * self.soft_loss(o, t)
        return total
