"""Synthetic head-like T1 volumes with meningioma-like lesions (the demo's and the fast tests' data).

Recipe (see ``data/README.md``): an ellipsoidal head with scalp, skull, CSF, grey and white matter and
ventricles; 0, 1 or 2 extra-axial lesions attached to the inner skull surface, bright (contrast
enhancing), lobulated, with volumes drawn log-normally and clipped to ~0.1-50 ml; a smooth
multiplicative bias field; Rician noise; a non-identity affine (rotation, origin, sometimes a flipped
axis). Deterministic by seed: case ``i`` uses ``numpy.random.default_rng([seed, i])``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from seg.io import save_nifti, write_text

LABELS = {0: "background", 1: "meningioma"}
# target "ventricles": the ventricles, enlarged 1.6x (~45 ml, a large smooth structure as a cardiac atrium is),
# are the label; the lesions stay in the image, unlabelled (the whole-scan proxy of docs/results.md)
TARGETS = {"lesions": LABELS, "ventricles": {0: "background", 1: "ventricles"}}
VENTRICLE_SCALE = 1.6
FOV_MM = 200.0
INNER_SKULL = 0.86


@dataclass
class SynthCase:
    image: np.ndarray  # float32, [X, Y, Z]
    label: np.ndarray  # uint8, [X, Y, Z]
    affine: np.ndarray  # 4x4
    lesion_ml: list[float]


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = math.radians(rng.uniform(-max_deg, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)


def _smooth_noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    n = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return n / (n.std() + 1e-8)


def make_case(seed: int, index: int, shape=(64, 64, 64), target: str = "lesions") -> SynthCase:
    """Generate case ``index`` of the dataset with ``seed``; ``target``: which structure is labelled (TARGETS)."""
    rng = np.random.default_rng([seed, index])
    shape = tuple(int(s) for s in shape)
    spacing = np.array([FOV_MM / s for s in shape])
    grids = np.meshgrid(*[(np.arange(s) - (s - 1) / 2) * sp for s, sp in zip(shape, spacing)], indexing="ij")
    semi = np.array([72.0, 88.0, 80.0]) * rng.uniform(0.93, 1.05, size=3)
    r = np.sqrt(sum((g / a) ** 2 for g, a in zip(grids, semi)))
    r = r * (1 + 0.015 * _smooth_noise(rng, shape, 4.0 / spacing.mean() * 3))  # irregular surfaces

    img = np.zeros(shape, np.float32)
    img[r < 1.0] = 0.75  # scalp (fat, bright in T1)
    img[r < 0.93] = 0.08  # skull
    img[r < INNER_SKULL + 0.02] = 0.15  # dura / CSF
    brain = r < INNER_SKULL - 0.02
    img[brain] = 0.42  # grey matter
    wm = brain & (r < 0.72) & (_smooth_noise(rng, shape, 6.0 / spacing.mean()) > -0.6)
    img[wm] = 0.62
    k = VENTRICLE_SCALE if target == "ventricles" else 1.0
    vent = np.sqrt((grids[0] / (10 * k)) ** 2 + (grids[1] / (22 * k)) ** 2 + ((grids[2] - 5) / (12 * k)) ** 2) < 1.0
    img[vent & brain] = 0.12

    label = np.zeros(shape, np.uint8)
    n_lesions = rng.choice([0, 1, 2], p=[0.15, 0.65, 0.2])
    volumes = []
    inside = r < INNER_SKULL
    for _ in range(n_lesions):
        vol_ml = float(np.clip(rng.lognormal(mean=math.log(4.0), sigma=1.3), 0.1, 50.0))
        radius = (3 * vol_ml * 1000 / (4 * math.pi)) ** (1 / 3)
        d = rng.normal(size=3)
        d[2] = abs(d[2]) + 0.3  # mostly above the skull base
        d /= np.linalg.norm(d)
        surface = d * semi * INNER_SKULL
        centre = surface - d * radius * 0.55  # attached to the inner skull surface, growing inward
        aspect = rng.uniform(0.8, 1.25, size=3)
        q = np.sqrt(sum(((g - c) / (radius * a)) ** 2 for g, c, a in zip(grids, centre, aspect)))
        q = q * (1 + 0.12 * _smooth_noise(rng, shape, max(1.0, radius / spacing.mean() / 2)))
        mask = (q < 1.0) & inside
        if not mask.any():  # very small lesion between voxel centres: keep the nearest voxel
            idx = tuple(int(np.clip(round(c / sp + (s - 1) / 2), 0, s - 1)) for c, sp, s in zip(centre, spacing, shape))
            mask[idx] = True
        label[mask] = 1
        volumes.append(float(mask.sum() * spacing.prod() / 1000))
    lesion = label > 0
    img[lesion] = 0.9 + 0.05 * _smooth_noise(rng, shape, 1.0)[lesion]
    if target == "ventricles":
        label = ((vent & brain) & ~lesion).astype(np.uint8)

    img = ndimage.gaussian_filter(img, 0.6)
    bias = np.exp(0.15 * _smooth_noise(rng, shape, shape[0] / 4))
    img = img * bias
    sigma = 0.03
    img = np.sqrt((img + rng.normal(0, sigma, shape)) ** 2 + rng.normal(0, sigma, shape) ** 2)
    img = (img * 1000).astype(np.float32)

    rot = _rotation(rng, 12.0)
    flip = np.diag([-1.0 if rng.random() < 0.3 else 1.0, 1.0, 1.0])  # some cases LAS-like
    lin = rot @ flip @ np.diag(spacing)
    affine = np.eye(4)
    affine[:3, :3] = lin
    affine[:3, 3] = -lin @ ((np.array(shape) - 1) / 2) + rng.uniform(-10, 10, size=3)
    return SynthCase(img, label, affine, volumes)


def write_dataset(
    out: str | Path, n: int, seed: int = 0, shape=(64, 64, 64), layout: str = "msd", target: str = "lesions"
) -> Path:
    """Write ``n`` synthetic cases and ``dataset.json`` (MSD or nnU-Net raw layout) under ``out``; ``target``:
    the labelled structure (``TARGETS``)."""
    labels = TARGETS[target]
    out = Path(out)
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    training, lesions = [], {}
    for i in range(n):
        case = make_case(seed, i, shape, target)
        cid = f"synth_{i:03d}"
        img_name = f"{cid}_0000.nii.gz" if layout == "nnunet" else f"{cid}.nii.gz"
        for arr, path in ((case.image, out / "imagesTr" / img_name), (case.label, out / "labelsTr" / f"{cid}.nii.gz")):
            nii = nib.Nifti1Image(arr, case.affine)
            nii.set_qform(case.affine, code=1)
            nii.set_sform(case.affine, code=1)
            save_nifti(nii, path)
        training.append({"image": f"./imagesTr/{img_name}", "label": f"./labelsTr/{cid}.nii.gz"})
        lesions[cid] = [round(v, 3) for v in case.lesion_ml]
    if layout == "nnunet":
        meta = {
            "channel_names": {"0": "T1"},
            "labels": {name: i for i, name in labels.items()},
            "numTraining": n,
            "file_ending": ".nii.gz",
        }
    else:
        meta = {
            "name": "SyntheticMeningioma",
            "description": f"seg synthetic head T1 volumes with meningioma-like lesions (seed {seed})",
            "tensorImageSize": "3D",
            "modality": {"0": "T1"},
            "labels": {str(i): name for i, name in labels.items()},
            "numTraining": n,
            "training": training,
        }
    meta["seg_synthetic"] = {"seed": seed, "shape": list(shape), "target": target, "lesion_ml": lesions}
    write_text(out / "dataset.json", json.dumps(meta, indent=2))
    return out
