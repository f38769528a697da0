"""Resampling in slabs: MONAI's spatial resampling with a bounded working set.

MONAI's ``Spacing`` (and its inverse, which :func:`seg.data.inverse.invert_to_original` runs) resamples
through one ``AffineTransform`` call over the whole output: a sampling grid of 3 coordinates per output
voxel (in the computation dtype) beside the output itself. For a 1-mm 256^3 head resampled to 0.625 mm
(410^3, 69 M voxels) that grid alone is 1.7 GB in float64, and the pre-processing peaked at 4.2 GB. MONAI
has no chunked resampler, so this module adds the one thing it lacks: :class:`SlabAffineTransform` runs
MONAI's own ``AffineTransform`` on slabs of the output's first axis (each slab's matrix shifted by the
slab's start) and writes them into one float32 output. Every output voxel is sampled independently, so the
slabs give the whole call's values (checked in ``tests/data/test_resample.py``); only the working set is
bounded (``SLAB_VOXELS`` output voxels a slab).

:func:`install` puts the class where MONAI's functional ``spatial_resample`` looks it up
(``monai.transforms.spatial.functional.AffineTransform``); ``seg.data.transforms`` installs it on import,
so training, the k-fold's validation and ``seg-predict`` all resample this way. Outputs at or under one
slab take MONAI's path unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.networks.layers import AffineTransform

SLAB_VOXELS = 1 << 21  # output voxels a slab: 2 M (a 48 MB float64 grid), ~40 slabs for a 410^3 output


def slabs(shape: Sequence[int], voxels: int | None = None):
    """``(start, stop)`` ranges of the first axis of a ``shape`` volume, ~``voxels`` voxels each (default
    :data:`SLAB_VOXELS`): how the whole-volume steps of prediction and pre-processing bound their working set."""
    plane = int(np.prod(shape[1:], dtype=np.int64)) or 1
    rows = max(1, (voxels or SLAB_VOXELS) // plane)
    return [(a, min(a + rows, int(shape[0]))) for a in range(0, int(shape[0]), rows)]


class SlabAffineTransform(AffineTransform):
    """``AffineTransform`` whose voxel-space (``normalized=False``) 3D calls run in slabs of the output's
    first spatial axis and return float32 (what ``spatial_resample`` returns in any case)."""

    def forward(self, src: torch.Tensor, theta: torch.Tensor, spatial_size=None) -> torch.Tensor:
        size = tuple(int(s) for s in (spatial_size if spatial_size is not None else src.shape[2:]))
        parts = slabs(size) if len(size) == 3 else []
        if self.normalized or src.dim() != 5 or len(parts) < 2 or theta.dim() != 2:
            return super().forward(src, theta, spatial_size)
        theta = theta if theta.shape[0] == 4 else torch.cat([theta, theta.new_tensor([[0, 0, 0, 1]])])
        out = torch.empty((src.shape[0], src.shape[1], *size), dtype=torch.float32, device=src.device)
        for a, b in parts:
            shift = torch.eye(4, dtype=theta.dtype, device=theta.device)
            shift[0, 3] = a  # slab voxel (i, j, k) is the output's (a + i, j, k)
            out[:, :, a:b] = super().forward(src, theta @ shift, (b - a, *size[1:]))
        return out


def install() -> None:
    """Make MONAI's functional spatial resampling use :class:`SlabAffineTransform` (idempotent)."""
    from monai.transforms.spatial import functional

    if not hasattr(functional, "AffineTransform"):  # a MONAI that moved it: fail loudly in the tests, not here
        return
    functional.AffineTransform = SlabAffineTransform
