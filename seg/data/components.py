"""Connected components of binary masks: the one helper behind the dataset fingerprint, seg-predict's case
reports, the head crop, detection matching, overlays and postprocessing.

Connectivity is named by the neighbours a voxel touches: 26 (faces, edges and corners: seg's default,
as nnU-Net's and MONAI's ``KeepLargestConnectedComponent`` with ``connectivity=None``) or 6 (faces only:
``scipy.ndimage.label``'s default, the head crop's, and the Raidionics validation code's).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def structure(ndim: int, connectivity: int = 26) -> np.ndarray:
    """The structuring element: full (26 in 3D, 8 in 2D) or faces only (6 in 3D, 4 in 2D)."""
    if connectivity in (26, 8):
        return np.ones((3,) * ndim, bool)
    if connectivity in (6, 4):
        return ndimage.generate_binary_structure(ndim, 1)
    raise ValueError(f"connectivity must be 26 or 6 (8 or 4 in 2D), got {connectivity}")


def label_components(mask: np.ndarray, connectivity: int = 26) -> tuple[np.ndarray, int]:
    """``(labels, n)``: each component numbered 1..n, background 0."""
    mask = np.asarray(mask) > 0
    if not mask.any():
        return np.zeros(mask.shape, np.int32), 0
    lab, n = ndimage.label(mask, structure=structure(mask.ndim, connectivity))
    return lab, int(n)


def bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The slices of ``mask``'s smallest box holding every voxel set (None when none is)."""
    mask = np.asarray(mask) > 0
    if not mask.any():
        return None
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def count_components(mask: np.ndarray, connectivity: int = 26) -> int:
    """How many components ``mask`` has, labelled inside its bounding box only (a whole scan's small structure:
    the labelling was a sixth of a case's fingerprint)."""
    box = bounding_box(mask)
    return 0 if box is None else label_components(np.asarray(mask)[box], connectivity)[1]


def centroid(mask: np.ndarray) -> np.ndarray | None:
    """The mean voxel index of ``mask``'s voxels (None when it has none), found inside its bounding box."""
    box = bounding_box(mask)
    if box is None:
        return None
    return np.argwhere(np.asarray(mask)[box] > 0).mean(0) + [b.start for b in box]


def component_sizes(lab: np.ndarray, n: int) -> np.ndarray:
    """Voxels of components 1..n (index 0 is component 1)."""
    return np.bincount(lab.ravel(), minlength=n + 1)[1:]


def largest_component(mask: np.ndarray, connectivity: int = 26) -> np.ndarray:
    """The largest component of ``mask`` (boolean, same shape; all False when empty)."""
    lab, n = label_components(mask, connectivity)
    if n <= 1:
        return lab > 0
    return lab == 1 + int(np.argmax(component_sizes(lab, n)))


def component_indices(mask: np.ndarray, min_voxels: int = 0, connectivity: int = 26) -> list[np.ndarray]:
    """Components with at least ``min_voxels`` voxels, each as the flat indices of its voxels."""
    lab, n = label_components(mask, connectivity)
    if n == 0:
        return []
    sizes = component_sizes(lab, n)
    flat = lab.ravel()
    return [np.flatnonzero(flat == i) for i in range(1, n + 1) if sizes[i - 1] >= min_voxels]
