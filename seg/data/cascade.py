"""A two-stage cascade's data (nnU-Net's ``3d_cascade_fullres``): the second stage reads, beside each case's
images, the first stage's foreground probabilities as extra input channels (``data.previous_stage``).

The first stage is a finished ``seg-kfold`` run (every case in a validation fold, ``cv.save_probabilities``
on: the default). Its ``fold_<k>/validation/<case>_prob.npz`` hold each case's probabilities on the case's
own grid, predicted by the fold's network that never trained on that case: out-of-fold, so the second stage
learns from the first stage's real errors, not from its fit to its own training cases (nnU-Net trains its
cascade on the same). Each becomes a NIfTI on the case's grid in seg's cache (``$SEG_CACHE_DIR/previous_stage``,
named by the sha256 of the npz and of the case's first image: a new first-stage run or a changed image is a
new file, never a stale one), which the pre-processing resamples with the image and appends to its channels
(:func:`seg.data.transforms.deterministic_transforms`). At prediction the chained bundle runs the first stage
itself (:class:`seg.inference.predictor.Predictor`).

Written here rather than taken from MONAI or nnU-Net: MONAI has no cascade; nnU-Net's reads its own
preprocessed folders and one-hot segmentations, where the issue asks for probabilities on seg's layout.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from pathlib import Path

import nibabel as nib
import numpy as np
import yaml

from seg.config import pool
from seg.data.datalist import DatasetError, DatasetSpec
from seg.errors import one_line
from seg.io import cache_root, file_sha256, on_grid_of, save_nifti

SUFFIX = "_prob.npz"  # the k-fold run's out-of-fold probabilities (seg.inference.batch, format npz)


def previous_channel_names(labels: Mapping[int, str]) -> list[str]:
    """The second stage's extra channels: one per foreground label of the first stage, in class order."""
    return [f"previous {labels[i]}" for i in sorted(labels) if i != 0]


def _first_stage_meta(run: Path) -> dict:
    path = run / "model" / "model.yaml"
    if not path.is_file():
        raise DatasetError(
            f"{run}: not a finished seg-kfold run (no model/model.yaml): data.previous_stage names the first "
            "stage's k-fold run folder, after all its folds ran"
        )
    try:
        meta = yaml.safe_load(path.read_text())
        return {"labels": {int(k): str(v) for k, v in dict(meta["labels"]).items()}, "channels": meta["channel_names"]}
    except (yaml.YAMLError, OSError, KeyError, TypeError, ValueError) as e:
        raise DatasetError(f"{path}: not a readable seg model.yaml ({one_line(e)})") from None


def attach_previous_stage(spec: DatasetSpec, run: str | Path) -> DatasetSpec:
    """``spec`` with each case's previous-stage file and the previous channels' names; one line naming the
    file for a run of other labels or channels, a case without out-of-fold probabilities, or another grid."""
    run = Path(run).expanduser().resolve()
    meta = _first_stage_meta(run)
    where = run / "model" / "model.yaml"
    if meta["labels"] != spec.labels:
        raise DatasetError(
            f"{where}: the first stage segments {sorted(meta['labels'].values())}, {spec.root} has "
            f"{sorted(spec.labels.values())}: a cascade's stages segment the same labels"
        )
    if list(meta["channels"]) != list(spec.channel_names):
        raise DatasetError(
            f"{where}: the first stage read channels {list(meta['channels'])}, {spec.root} has "
            f"{spec.channel_names}: a cascade's stages read the same images"
        )
    found = {p.name[: -len(SUFFIX)]: p for p in run.glob(f"fold_*/validation/*{SUFFIX}")}
    missing = [c.case_id for c in spec.cases if c.case_id not in found]
    if missing:
        raise DatasetError(
            f"{run}: no out-of-fold probabilities for {len(missing)} case(s) ({', '.join(missing[:5])}): the first "
            "stage must run every fold (no cv.fold_ids) with cv.save_probabilities=true"
        )
    folder = cache_root() / "previous_stage"
    with pool(4) as ex:
        files = list(ex.map(lambda c: as_nifti(found[c.case_id], c.images[0], folder), spec.cases))
    cases = [dataclasses.replace(c, previous=str(f)) for c, f in zip(spec.cases, files)]
    return dataclasses.replace(spec, cases=cases, previous_channels=previous_channel_names(spec.labels))


def as_nifti(npz: Path, reference: str, folder: Path) -> Path:
    """The probabilities of ``npz`` (``prob``: ``[*S]`` of a two-class model, ``[K-1, *S]`` else) as a float32
    NIfTI on ``reference``'s grid, made once into ``folder`` under a name keyed by both files' contents."""
    key = hashlib.sha256(f"{file_sha256(npz)} {file_sha256(reference)}".encode()).hexdigest()[:40]
    out = folder / f"{key}.nii.gz"
    if out.is_file():
        return out
    try:
        with np.load(npz, allow_pickle=False) as z:
            prob = z["prob"].astype(np.float32)
    except (OSError, KeyError, ValueError) as e:
        raise DatasetError(f"{npz}: not readable out-of-fold probabilities ({one_line(e)})") from None
    ref = nib.load(reference)
    spatial = prob.shape if prob.ndim == 3 else prob.shape[1:]
    if tuple(spatial) != tuple(ref.shape[:3]):
        raise DatasetError(
            f"{npz}: probabilities of shape {list(spatial)}, but the case's image {reference} is "
            f"{list(ref.shape[:3])}: the first stage was run on other images"
        )
    folder.mkdir(parents=True, exist_ok=True)
    save_nifti(probabilities_image(prob, ref), out)
    return out


def probabilities_image(prob: np.ndarray, reference: nib.Nifti1Image) -> nib.Nifti1Image:
    """Foreground probabilities (``[*S]``, or ``[K-1, *S]``) as the float32 image a second stage reads beside
    ``reference``: on its grid, one channel per foreground label in the last axis (3D for one label)."""
    prob = prob[0] if prob.ndim == 4 and len(prob) == 1 else prob
    return on_grid_of(prob if prob.ndim == 3 else np.moveaxis(prob, 0, -1), reference, np.float32)
