"""MONAI dictionary-transform pipelines built from the ``conf/data`` options.

The deterministic prefix (load ... crop/pad/resize) is what ``CacheDataset``/``PersistentDataset`` cache;
the random suffix (crops and augmentation) runs every epoch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from enum import Enum

import numpy as np
from monai import transforms as T
from scipy import ndimage

from seg.config import check_option
from seg.data.datalist import DatasetSpec


class Mode(str, Enum):
    """``patch``: random patches, sliding-window inference; ``resize``: the whole volume resized (the paper)."""

    PATCH = "patch"
    RESIZE = "resize"


class Normalize(str, Enum):
    ZSCORE = "zscore"
    MINMAX = "minmax"
    WINDOW = "window"
    CT = "ct"  # clip to [clip lo, hi], then z-score with the dataset's fixed mean and std (seg-plan's CT rule)
    NONE = "none"


class Crop(str, Enum):
    NONE = "none"
    NONZERO = "nonzero"
    HEAD = "head"


class HeadMask:
    """The AGUNet paper's head crop: threshold at ``threshold`` of the intensity range, keep the largest
    connected component, fill holes. Used as ``CropForegroundd``'s ``select_fn`` (the bounding box of
    this mask is the crop), so MONAI records it and can invert it.
    """

    def __init__(self, threshold: float = 0.2) -> None:
        self.threshold = threshold

    def __call__(self, img) -> np.ndarray:
        a = np.asarray(img.detach().cpu() if hasattr(img, "detach") else img)
        a = a.max(0) if a.ndim == 4 else a  # [C, *S]: any channel
        lo, hi = float(a.min()), float(a.max())
        mask = a > lo + self.threshold * (hi - lo)
        if not mask.any():
            return np.ones((1, *a.shape), bool)
        lab, n = ndimage.label(mask)
        if n > 1:
            sizes = ndimage.sum_labels(mask, lab, index=np.arange(1, n + 1))
            mask = lab == (1 + int(np.argmax(sizes)))
        return ndimage.binary_fill_holes(mask)[None]


def crop_mode(crop_foreground) -> str:
    if crop_foreground is True:
        return "nonzero"
    if crop_foreground in (False, None):
        return "none"
    return check_option("data.crop_foreground", str(crop_foreground), Crop)


def _label_map(spec: DatasetSpec) -> list:
    """Map non-consecutive label ids (e.g. 0, 2, 7) to 0..K-1, the class index the nets predict."""
    ids = spec.label_ids
    if ids == list(range(len(ids))):
        return []
    return [T.MapLabelValued(keys="label", orig_labels=ids, target_labels=list(range(len(ids))), dtype="int16")]


def normalize_transform(normalize: Mapping) -> list:
    mode = check_option("normalize.mode", normalize.get("mode", "zscore"), Normalize)
    if mode == "zscore":
        return [T.NormalizeIntensityd(keys="image", nonzero=bool(normalize.get("nonzero", True)), channel_wise=True)]
    if mode == "minmax":
        return [T.ScaleIntensityd(keys="image", minv=0.0, maxv=1.0, channel_wise=True)]
    if mode == "window":
        lo, hi = normalize.get("window", (-1000.0, 1000.0))
        return [T.ScaleIntensityRanged(keys="image", a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)]
    if mode == "ct":
        # clip + z-score with fixed statistics is one linear map with clipping
        lo, hi = normalize["clip"]
        mean, std = float(normalize["mean"]), float(normalize["std"])
        return [
            T.ScaleIntensityRanged(
                keys="image", a_min=lo, a_max=hi, b_min=(lo - mean) / std, b_max=(hi - mean) / std, clip=True
            )
        ]
    return []


def deterministic_transforms(
    spec: DatasetSpec,
    mode: str = "patch",
    spacing: Sequence[float] | None = None,
    orientation: str | None = "RAS",
    normalize: Mapping | None = None,
    crop_foreground: bool | str = False,
    resize_shape: Sequence[int] | None = None,
    with_label: bool = True,
    head_threshold: float = 0.2,
) -> list:
    """Load -> channel first -> orientation -> spacing -> normalise -> crop -> (resize).

    Every spatial step is one MONAI records, so :func:`seg.data.inverse.invert_to_original` can undo it.
    """
    mode = check_option("data.mode", mode, Mode)
    keys = ["image", "label"] if with_label else ["image"]
    interp = ["bilinear", "nearest"][: len(keys)]
    xs: list = [T.LoadImaged(keys=keys, image_only=True), T.EnsureChannelFirstd(keys=keys)]
    if with_label:
        xs += _label_map(spec)
    if orientation:
        xs.append(T.Orientationd(keys=keys, axcodes=orientation, labels=None))
    if spacing:
        xs.append(T.Spacingd(keys=keys, pixdim=tuple(spacing), mode=interp))
    xs += normalize_transform(normalize or {"mode": "zscore"})
    crop = crop_mode(crop_foreground)
    if crop == "nonzero":
        xs.append(T.CropForegroundd(keys=keys, source_key="image", allow_smaller=True))
    elif crop == "head":
        xs.append(
            T.CropForegroundd(keys=keys, source_key="image", select_fn=HeadMask(head_threshold), allow_smaller=True)
        )
    if mode == "resize":
        if not resize_shape:
            raise ValueError("data.mode=resize needs data.resize_shape")
        xs.append(
            T.Resized(keys=keys, spatial_size=tuple(resize_shape), mode=["trilinear", "nearest-exact"][: len(keys)])
        )
    xs.append(T.EnsureTyped(keys="image", dtype="float32", track_meta=True))
    return xs


def random_transforms(
    mode: str,
    patch_size: Sequence[int] | None,
    pos_neg: Sequence[float] = (1.0, 1.0),
    num_samples: int = 1,
    augment: Mapping | None = None,
) -> list:
    """Patch sampling (positive/negative balanced) and augmentation, each with its probability."""
    keys = ["image", "label"]
    xs: list = []
    if mode == "patch":
        ps = tuple(patch_size)
        xs += [
            T.SpatialPadd(keys=keys, spatial_size=ps),
            T.RandCropByPosNegLabeld(
                keys=keys,
                label_key="label",
                spatial_size=ps,
                pos=pos_neg[0],
                neg=pos_neg[1],
                num_samples=num_samples,
                image_key="image",
                image_threshold=0.0,
                allow_smaller=False,
            ),
        ]
    a = dict(augment or {})
    flip = float(a.get("flip_prob", 0.0))
    if flip > 0:
        axes = a.get("flip_axes")
        xs += [T.RandFlipd(keys=keys, prob=flip, spatial_axis=ax) for ax in (range(3) if axes is None else axes)]
    affine_p = float(a.get("affine_prob", 0.0))
    if affine_p > 0:
        rot = math.radians(float(a.get("rotate_deg", 15.0)))
        scale = float(a.get("scale", 0.1))
        shift = float(a.get("translate_vox", 0.0))
        xs.append(
            T.RandAffined(
                keys=keys,
                prob=affine_p,
                rotate_range=(rot,) * 3,
                scale_range=(scale,) * 3,
                translate_range=(shift,) * 3 if shift else None,
                mode=["bilinear", "nearest"],
                padding_mode="zeros",
            )
        )
    if float(a.get("intensity_scale_prob", 0.0)) > 0:
        xs.append(
            T.RandScaleIntensityd(
                keys="image", factors=float(a.get("intensity_scale", 0.1)), prob=float(a["intensity_scale_prob"])
            )
        )
    if float(a.get("intensity_shift_prob", 0.0)) > 0:
        xs.append(
            T.RandShiftIntensityd(
                keys="image", offsets=float(a.get("intensity_shift", 0.1)), prob=float(a["intensity_shift_prob"])
            )
        )
    if float(a.get("noise_prob", 0.0)) > 0:
        xs.append(T.RandGaussianNoised(keys="image", prob=float(a["noise_prob"]), std=float(a.get("noise_std", 0.05))))
    return xs
