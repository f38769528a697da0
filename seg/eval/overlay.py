"""PNG montages: three orthogonal slices through a structure with mask contours (reports, seg-predict --png)."""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from seg.io import atomic_write_bytes


def _to_ras(a: np.ndarray, affine: np.ndarray) -> np.ndarray:
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    return nib.orientations.apply_orientation(a, ornt)


def overlay_montage(
    image: np.ndarray,
    masks: Mapping[str, np.ndarray],
    path: str | Path,
    title: str = "",
    affine: np.ndarray | None = None,
) -> None:
    """Write a 1x3 montage (slices through the masks' centroid) with one contour colour per mask
    (``{"red": pred, "lime": ref}``). ``image`` and masks are ``[X, Y, Z]`` arrays; with the image's
    ``affine`` they are reoriented to RAS first and the panels are sagittal, coronal and axial."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["axis 0", "axis 1", "axis 2"]
    if affine is not None:
        image = _to_ras(image, affine)
        masks = {c: _to_ras(m, affine) for c, m in masks.items()}
        names = ["sagittal", "coronal", "axial"]

    union = np.zeros(image.shape, bool)
    for m in masks.values():
        union |= m > 0
    centre = [int(round(x)) for x in np.argwhere(union).mean(0)] if union.any() else [s // 2 for s in image.shape]
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.2))
    for ax, axis in zip(axes, range(3)):
        sl = [slice(None)] * 3
        sl[axis] = centre[axis]
        ax.imshow(np.rot90(image[tuple(sl)]), cmap="gray")
        for colour, m in masks.items():
            s = m[tuple(sl)] > 0
            if s.any():
                ax.contour(np.rot90(s), [0.5], colors=colour, linewidths=0.8)
        ax.set_title(f"{names[axis]}, slice {centre[axis]}", fontsize=8)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, lambda tmp: Path(tmp).write_bytes(buf.getvalue()))
