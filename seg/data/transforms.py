"""MONAI dictionary-transform pipelines built from the ``conf/data`` options.

The deterministic prefix (load ... crop/pad/resize) is what ``CacheDataset``/``PersistentDataset`` cache;
the random suffix (crops and augmentation) runs every epoch.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from typing import Any

import numpy as np
import torch
from monai import transforms as T
from scipy import ndimage

from seg.config import UserError, check_option, finite_number
from seg.data.components import largest_component
from seg.data.datalist import DatasetSpec
from seg.data.resample import install as _install_slab_resampling
from seg.data.resample import slabs


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
        return ndimage.binary_fill_holes(largest_component(mask, connectivity=6))[None]


MAX_SPACING_MM = 100.0  # a voxel spacing above this is a unit mistake (metres, a scale), not a scan


def _interval(r: Any) -> bool:
    try:
        lo, hi = r
    except (TypeError, ValueError):
        return False
    return finite_number(lo) and finite_number(hi) and lo < hi


@dataclass(frozen=True)
class Preprocessing:
    """The deterministic pre-processing a model was trained with: what ``model.yaml`` stores and what
    seg-predict and the out-of-fold prediction replay. The training patch is not part of it: it is the
    sliding window's ``roi_size`` (``seg.nn.inferer.InfererSpec``), stored once.

    Args:
        mode: "patch" (random patches, sliding-window inference) or "resize" (the whole volume resized).
        resize_shape: the network input shape in resize mode.
        spacing: target voxel spacing in mm, or None to keep the images' own.
        orientation: axis codes to reorient to (e.g. "RAS"), or None.
        normalize: ``{mode: zscore|minmax|window|ct|none, ...}`` (see :func:`normalize_transform`).
        crop_foreground: "none", "nonzero" or "head" (see :class:`Crop`).
        head_threshold: threshold of the head crop, as a fraction of the intensity range.
    """

    mode: str = "patch"
    resize_shape: list[int] | None = None
    spacing: list[float] | None = None
    orientation: str | None = "RAS"
    normalize: dict = field(default_factory=lambda: {"mode": "zscore", "nonzero": True})
    crop_foreground: bool | str = False
    head_threshold: float = 0.2

    @classmethod
    def from_mapping(cls, m: Mapping | None) -> Preprocessing:
        """From ``model.yaml``'s ``preprocessing`` (or a datamodule's options). ``patch_size``, which bundles
        written before 2026-12 stored here too, is dropped: the patch is the inferer's ``roi_size``."""
        m = dict(m or {})
        m.pop("patch_size", None)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(m) - known)
        if unknown:
            raise UserError(f"preprocessing: unknown keys {unknown} (known: {sorted(known)})")
        out = cls(**m)
        out.check()
        return out

    def check(self) -> None:
        """Values that would fail inside MONAI or give nonsense, one line each: the spacing (positive, finite,
        at most ``MAX_SPACING_MM``), the normalisation's own figures (ct: clip, mean, std; window: its range)."""
        if self.spacing is not None:
            sp = [float(x) for x in self.spacing]
            if len(sp) != 3 or not all(math.isfinite(x) and 0 < x <= MAX_SPACING_MM for x in sp):
                raise UserError(
                    f"preprocessing.spacing {self.spacing}: give 3 spacings in mm, each in (0, {MAX_SPACING_MM:g}]"
                )
        norm = dict(self.normalize or {})
        mode = norm.get("mode", "zscore")
        if mode in ("ct", "window"):
            rng = norm.get("clip" if mode == "ct" else "window", None if mode == "ct" else (-1000.0, 1000.0))
            if not _interval(rng):
                key = "clip" if mode == "ct" else "window"
                raise UserError(f"preprocessing.normalize.{key} {rng!r}: {mode} needs [low, high] with low < high")
        if mode == "ct":
            mean, std = norm.get("mean"), norm.get("std")
            if not (finite_number(mean) and finite_number(std) and float(std) > 0):
                raise UserError(f"preprocessing.normalize: ct needs the data's mean and std > 0, got {mean!r}, {std!r}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Augment:
    """Training augmentation: the one home of its defaults (``conf/data/*.yaml`` lists the keys with ``null``
    for "the default", so ``data.augment.rotate_deg=5`` needs no ``+``). A probability of 0 switches a
    transform off; :meth:`none` switches all off.

    Args:
        flip_prob: probability of a mirroring, per axis.
        flip_axes: the axes that may be mirrored; None = all three (seg-plan drops axes along which the
            labels keep their order).
        affine_prob: probability of a rotation + scaling (+ translation) in one resampling.
        rotate_deg: rotation range (+-) per axis, degrees.
        scale: scaling range (+-), as a fraction.
        translate_vox: translation range (+-) in voxels, 0 for none.
        intensity_scale_prob, intensity_scale: random intensity scaling (factor range +-).
        intensity_shift_prob, intensity_shift: random intensity offset (range +-).
        noise_prob, noise_std: additive Gaussian noise.
    """

    flip_prob: float = 0.5
    flip_axes: list[int] | None = None
    affine_prob: float = 0.2
    rotate_deg: float = 15.0
    scale: float = 0.1
    translate_vox: float = 0.0
    intensity_scale_prob: float = 0.2
    intensity_scale: float = 0.1
    intensity_shift_prob: float = 0.2
    intensity_shift: float = 0.1
    noise_prob: float = 0.1
    noise_std: float = 0.05

    @property
    def mirror_axes(self) -> list[int]:
        """The axes training mirrors (none when ``flip_prob`` is 0): the only ones test-time augmentation may
        mirror, since a net never shown a mirrored axis does not recognise its structures mirrored."""
        if self.flip_prob <= 0:
            return []
        return [0, 1, 2] if self.flip_axes is None else sorted(int(a) for a in self.flip_axes)

    @classmethod
    def from_mapping(cls, m: Mapping | None) -> Augment:
        """From a config mapping; missing or null keys take the defaults above; unknown keys are an error."""
        m = {k: v for k, v in dict(m or {}).items() if v is not None}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(m) - known)
        if unknown:
            raise UserError(f"data.augment: unknown keys {unknown} (known: {sorted(known)})")
        return cls(**m)

    @classmethod
    def none(cls) -> Augment:
        """Every random transform off (patch sampling stays)."""
        return cls(flip_prob=0.0, affine_prob=0.0, intensity_scale_prob=0.0, intensity_shift_prob=0.0, noise_prob=0.0)


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


class ZScored(T.MapTransform):
    """MONAI's ``NormalizeIntensityd(nonzero, channel_wise=True)`` (z-score per channel, over its non-zero voxels
    with ``nonzero``; a zero std divides by 1), in place and a slab at a time: MONAI's gathers the masked voxels
    and makes three whole-volume copies (2.5 GB for a 512x512x300 CT). The mean and the population std are
    summed in float64 over slabs (two passes), so they differ from MONAI's float32 ones by rounding only."""

    def __init__(self, keys="image", nonzero: bool = True) -> None:
        super().__init__(keys)
        self.nonzero = bool(nonzero)

    def _stats(self, x: torch.Tensor) -> tuple[float, float] | None:
        n, total = 0, 0.0
        for a, b in slabs(x.shape):
            v = x[a:b][x[a:b] != 0] if self.nonzero else x[a:b]
            n, total = n + v.numel(), total + float(v.double().sum())
        if n == 0:
            return None
        mean, sq = total / n, 0.0
        for a, b in slabs(x.shape):
            v = x[a:b][x[a:b] != 0] if self.nonzero else x[a:b]
            sq += float(((v.double() - mean) ** 2).sum())
        return mean, math.sqrt(sq / n) or 1.0

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            img = img if isinstance(img, torch.Tensor) and img.dtype == torch.float32 else torch.as_tensor(img).float()
            for x in img:
                stats = self._stats(x)
                if stats is None:
                    continue
                mean, std = stats
                for a, b in slabs(x.shape):
                    v = x[a:b]
                    if self.nonzero:
                        m = v != 0
                        v[m] = (v[m] - mean) / std
                    else:
                        v.sub_(mean).div_(std)
            d[key] = img
        return d


def normalize_transform(normalize: Mapping) -> list:
    mode = check_option("normalize.mode", normalize.get("mode", "zscore"), Normalize)
    if mode == "zscore":
        return [ZScored(keys="image", nonzero=bool(normalize.get("nonzero", True)))]
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
    # a cascade's previous-stage probabilities move with the image through every spatial step, are neither
    # normalised nor a crop's source, and join the image's channels at the end (seg.data.cascade)
    prev = ["prev"] if spec.previous_channels else []
    space = keys + prev
    interp = ["bilinear", "nearest"][: len(keys)] + ["bilinear"] * len(prev)
    xs: list = [T.LoadImaged(keys=space, image_only=True), T.EnsureChannelFirstd(keys=space)]
    if with_label:
        xs += _label_map(spec)
    if orientation:
        xs.append(T.Orientationd(keys=space, axcodes=orientation, labels=None))
    if spacing:
        xs.append(T.Spacingd(keys=space, pixdim=tuple(spacing), mode=interp, dtype=np.float32))
    xs += normalize_transform(normalize or {"mode": "zscore"})
    crop = crop_mode(crop_foreground)
    if crop == "nonzero":
        xs.append(T.CropForegroundd(keys=space, source_key="image", allow_smaller=True))
    elif crop == "head":
        xs.append(
            T.CropForegroundd(keys=space, source_key="image", select_fn=HeadMask(head_threshold), allow_smaller=True)
        )
    if mode == "resize":
        if not resize_shape:
            raise UserError("data.mode=resize needs data.resize_shape")
        sizing = ["trilinear", "nearest-exact"][: len(keys)] + ["trilinear"] * len(prev)
        xs.append(T.Resized(keys=space, spatial_size=tuple(resize_shape), mode=sizing))
    if prev:
        xs += [T.ConcatItemsd(keys=["image", "prev"], name="image", dim=0), T.DeleteItemsd(keys="prev")]
    xs.append(T.EnsureTyped(keys="image", dtype="float32", track_meta=True))
    return xs


_install_slab_resampling()  # MONAI resampling in bounded slabs (seg.data.resample says why)
# with pydicom installed (seg's DICOM input), every LoadImage says that its optional GPU DICOM codec is absent
warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader", category=UserWarning)

FG, BG = "label_fg_indices", "label_bg_indices"  # FgBgToIndicesd's keys (device pipeline)


def sampling_cache(patch_size: Sequence[int]) -> list:
    """What the device pipeline caches after the deterministic steps: the pad to the patch and the foreground
    and background voxel indices the positive/negative sampler draws from (computed once per case instead of
    once per sample; the indices stay on the CPU, the volumes go to the device)."""
    return [
        T.SpatialPadd(keys=["image", "label"], spatial_size=tuple(patch_size)),
        T.FgBgToIndicesd(keys="label", image_key="image", image_threshold=0.0),
    ]


def random_transforms(
    mode: str,
    patch_size: Sequence[int] | None,
    pos_neg: Sequence[float] = (1.0, 1.0),
    num_samples: int = 1,
    augment: Augment | Mapping | None = None,
    cached_indices: bool = False,
) -> list:
    """Patch sampling (positive/negative balanced) and augmentation, each with its probability
    (``augment``: an :class:`Augment`, or its mapping; None = :meth:`Augment.none`). ``cached_indices``:
    the volumes were padded and their sampling indices cached by :func:`sampling_cache` (the device
    pipeline); the indices are dropped after the crop, so both pipelines give the same keys."""
    keys = ["image", "label"]
    xs: list = []
    if mode == "patch":
        ps = tuple(patch_size)
        idx = {"fg_indices_key": FG, "bg_indices_key": BG} if cached_indices else {}
        xs += [] if cached_indices else [T.SpatialPadd(keys=keys, spatial_size=ps)]
        xs.append(
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
                **idx,
            )
        )
        xs += [T.DeleteItemsd(keys=[FG, BG])] if cached_indices else []
    a = augment if isinstance(augment, Augment) else Augment.from_mapping(augment) if augment else Augment.none()
    if a.flip_prob > 0:
        axes = range(3) if a.flip_axes is None else a.flip_axes
        xs += [T.RandFlipd(keys=keys, prob=a.flip_prob, spatial_axis=ax) for ax in axes]
    if a.affine_prob > 0:
        rot = math.radians(a.rotate_deg)
        xs.append(
            T.RandAffined(
                keys=keys,
                prob=a.affine_prob,
                rotate_range=(rot,) * 3,
                scale_range=(a.scale,) * 3,
                translate_range=(a.translate_vox,) * 3 if a.translate_vox else None,
                mode=["bilinear", "nearest"],
                padding_mode="zeros",
            )
        )
    if a.intensity_scale_prob > 0:
        xs.append(T.RandScaleIntensityd(keys="image", factors=a.intensity_scale, prob=a.intensity_scale_prob))
    if a.intensity_shift_prob > 0:
        xs.append(T.RandShiftIntensityd(keys="image", offsets=a.intensity_shift, prob=a.intensity_shift_prob))
    if a.noise_prob > 0:
        xs.append(T.RandGaussianNoised(keys="image", prob=a.noise_prob, std=a.noise_std))
    return xs
