"""Planning rules that depend on the data alone (the search over timed steps, ``seg.plan.search``, decides the rest).

Spacing and the pooling/patch arithmetic follow nnU-Net v2 (Isensee et al. 2021): the median spacing,
with the low-resolution axis of anisotropic data taken at its 10th percentile; an axis is pooled while
its feature map stays at least 4 voxels; the patch is a multiple of 2^pools per axis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

ANISOTROPY = 3.0  # nnU-Net: an axis whose spacing is > 3x the finest is "low resolution"
MIN_FEATURE = 4  # the smallest feature-map size an axis is pooled to (the U-Nets' own min_pool_size)
MAX_POOLS = 5
ZERO_BACKGROUND = 0.2  # an image whose voxels are exactly 0 at least this often has a masked background


def target_spacing(spacings: Sequence[Sequence[float]]) -> list[float]:
    """The median spacing per axis; for anisotropic data the coarse axis at its 10th percentile (but not
    finer than the other axes' coarsest), so that it is not resampled to a resolution it never had."""
    s = np.asarray(spacings, dtype=float)
    target = np.median(s, 0)
    coarse = int(np.argmax(target))
    others = [i for i in range(3) if i != coarse]
    if target[coarse] > ANISOTROPY * target[others].min():
        target[coarse] = max(float(np.percentile(s[:, coarse], 10)), float(target[others].max()))
    return [round(float(t), 4) for t in target]


def resampled_shapes(
    shapes: Sequence[Sequence[int]], spacings: Sequence[Sequence[float]], target: Sequence[float]
) -> np.ndarray:
    return np.round(np.asarray(shapes, float) * np.asarray(spacings, float) / np.asarray(target, float)).astype(int)


def pools_per_axis(shape: Sequence[int]) -> list[int]:
    """How often each axis can be halved with its feature map staying >= MIN_FEATURE voxels."""
    return [max(0, min(MAX_POOLS, int(math.floor(math.log2(max(s, 1) / MIN_FEATURE))))) for s in shape]


def round_patch(shape: Sequence[int]) -> list[int]:
    """``shape`` rounded up to a multiple of 2^pools on each axis (what the pooling needs without padding)."""
    pools = pools_per_axis(shape)
    return [int(math.ceil(s / 2**p) * 2**p) for s, p in zip(shape, pools)]


def shrink_patch(patch: Sequence[int]) -> list[int]:
    """One step of nnU-Net's reduction: the largest axis loses a pooling step's worth (x 3/4, re-rounded)."""
    p = list(patch)
    i = int(np.argmax(p))
    p[i] = max(MIN_FEATURE * 2, int(p[i] * 0.75))
    return round_patch(p)


def is_ct(modalities: Sequence[str]) -> bool:
    """Every channel CT (``CT``, ``CT-venous``, ...): intensities in absolute units (HU)."""
    return bool(modalities) and all(m.strip().lower().startswith("ct") for m in modalities)


def normalization(modalities: Sequence[str], channels: list[list[dict]]) -> dict:
    """``data.normalize`` for the modality: CT (every channel CT) clips to the foreground's 0.5-99.5
    percentiles and z-scores with the foreground's mean and std (one set for the dataset: HU are absolute);
    anything else is z-scored per image, over the non-zero voxels when the background is masked to 0.

    Args:
        modalities: channel names from ``dataset.json`` (``CT``, ``MRI``, ``T1``, ...).
        channels: per case, per channel, the fingerprint's statistics (with ``sample``).
    """
    if is_ct(modalities):
        pooled = np.concatenate([np.asarray(c[0]["sample"], float) for c in channels if c[0]["sample"]])
        lo, hi = np.percentile(pooled, [0.5, 99.5])
        clipped = np.clip(pooled, lo, hi)
        return {
            "mode": "ct",
            "clip": [round(float(lo), 2), round(float(hi), 2)],
            "mean": round(float(clipped.mean()), 4),
            "std": round(float(clipped.std()) or 1.0, 4),
        }
    zero = float(np.median([c[0]["zero_fraction"] for c in channels]))
    return {"mode": "zscore", "nonzero": bool(zero >= ZERO_BACKGROUND)}


ORDER_CONSISTENCY = 0.9  # a label pair in the same order along an axis in >= 90 % of cases fixes that axis


def mirror_axes(cases: list[dict]) -> tuple[list[int], str]:
    """The axes (of the RAS-oriented arrays) that mirroring may flip, and why the others may not.

    Mirroring along an axis swaps what lies before and after along it. Where two labels keep the same
    order along an axis in (almost) every case (anterior before posterior hippocampus, left before right
    kidney), a mirrored sample teaches the wrong label for both: such an axis is not mirrored. nnU-Net
    mirrors every axis; this rule is seg's.
    """
    ids = sorted({k for c in cases for k in c["labels"]})
    fixed = {}
    for ax in range(3):
        for a_i, a in enumerate(ids):
            for b in ids[a_i + 1 :]:
                signs = [
                    np.sign(c["labels"][a]["centroid_ras"][ax] - c["labels"][b]["centroid_ras"][ax])
                    for c in cases
                    if c["labels"].get(a, {}).get("centroid_ras") and c["labels"].get(b, {}).get("centroid_ras")
                ]
                if len(signs) >= 5 and max(signs.count(1.0), signs.count(-1.0)) >= ORDER_CONSISTENCY * len(signs):
                    fixed.setdefault(ax, f"labels {a} and {b}")
    axes = [ax for ax in range(3) if ax not in fixed]
    why = "; ".join(f"axis {ax} ({'RAS'[ax]}) not mirrored: {v} keep their order along it" for ax, v in fixed.items())
    return axes, why or "every axis mirrored: no label pair keeps its order along one"
