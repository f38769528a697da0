"""The exact inverse of the pre-processing: a prediction on the network's grid back to the input's grid.

Undoes, in reverse order, every spatial step MONAI recorded while pre-processing the image: resize,
crop (pasted back into the crop box), resampling and reorientation; the result has the original
image's shape and affine. Used for validation predictions (k-fold) and by inference.
"""

from __future__ import annotations

import copy

import torch
from monai import transforms as T
from monai.data import MetaTensor


def invert_to_original(
    pred: torch.Tensor, image: MetaTensor, transform: T.Compose, nearest: bool = False
) -> MetaTensor:
    """Map ``pred`` back to the grid ``image`` was loaded from.

    Args:
        pred: ``[C, *S']`` on the pre-processed grid (probabilities, logits or a label map).
        image: the pre-processed image ``[C_in, *S']`` as ``transform`` returned it (its
            ``applied_operations`` record what to undo).
        transform: the deterministic image pipeline that produced ``image`` (built with ``with_label=False``).
        nearest: resample with nearest neighbour (label maps) instead of each step's own mode.

    Returns:
        ``[C, *S]`` on the original grid, with the original affine in its metadata.
    """
    if tuple(pred.shape[1:]) != tuple(image.shape[1:]):
        raise ValueError(f"prediction grid {list(pred.shape[1:])} differs from the image's {list(image.shape[1:])}")
    p = MetaTensor(pred.detach().cpu().float() if not nearest else pred.detach().cpu(), meta=copy.deepcopy(image.meta))
    inv = T.Invertd(keys="pred", transform=transform, orig_keys="image", nearest_interp=nearest, to_tensor=True)
    data = {"pred": p, "image": image}
    p.applied_operations = copy.deepcopy(image.applied_operations)
    return inv(data)["pred"]
