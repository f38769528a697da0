"""The mask pairs of the surface Dice fixture (``scripts/make_surface_fixtures.py``), rebuilt from recipes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

TOLERANCES = (0.5, 1.0, 2.0)
HIPPO = Path(os.environ.get("SEG_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data")) / "hippocampus"
HIPPO_CASES = ("hippocampus_003", "hippocampus_070", "hippocampus_189", "hippocampus_304", "hippocampus_390")


def ellipsoid(shape, centre, radii) -> np.ndarray:
    g = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).astype(float)
    return (((g - np.asarray(centre)) / np.asarray(radii)) ** 2).sum(-1) <= 1.0


SYNTHETIC = [
    # (name, shape, spacing, gt centre/radii, pred centre/radii)
    ("sphere_shift", (24, 24, 24), (1.0, 1.0, 1.0), ((12, 12, 12), (6, 6, 6)), ((13, 12, 11), (6, 6, 6))),
    ("aniso_grow", (20, 28, 12), (0.8, 0.8, 2.5), ((10, 14, 6), (5, 8, 3)), ((10, 14, 6), (6, 9, 3.5))),
    ("aniso_thin", (30, 30, 10), (0.5, 0.7, 3.0), ((15, 15, 5), (9, 4, 2)), ((14, 16, 5), (8, 5, 2))),
    ("small_far", (16, 16, 16), (1.5, 1.5, 1.5), ((5, 5, 5), (2, 2, 2)), ((10, 9, 8), (2.5, 2, 2))),
]


def synthetic_pairs():
    for name, shape, spacing, (gc, gr), (pc, pr) in SYNTHETIC:
        yield {"kind": "synthetic", "name": name}, ellipsoid(shape, gc, gr), ellipsoid(shape, pc, pr), spacing


def _erode(m: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_erosion

    return binary_erosion(m)


def hippocampus_pairs():
    """Each case's labels 1 and 2 against themselves shifted by two voxels (axis 1) and eroded by one."""
    import nibabel as nib

    if not HIPPO.exists():
        return
    for case in HIPPO_CASES:
        img = nib.load(str(HIPPO / "labelsTr" / f"{case}.nii.gz"))
        lab = np.asarray(img.dataobj).astype(int)
        spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
        for label in (1, 2):
            gt = lab == label
            yield (
                {"kind": "hippocampus", "case": case, "label": label, "change": "shift"},
                gt,
                np.roll(gt, 2, 1),
                spacing,
            )
            yield {"kind": "hippocampus", "case": case, "label": label, "change": "erode"}, gt, _erode(gt), spacing


def rebuild(row: dict):
    """(gt, pred, spacing) of a fixture row; None when its data is absent."""
    pairs = synthetic_pairs() if row["kind"] == "synthetic" else hippocampus_pairs()
    key = {k: row[k] for k in row if k not in ("spacing", "surface_dice")}
    for recipe, gt, pred, spacing in pairs:
        if recipe == key:
            return gt, pred, spacing
    return None
