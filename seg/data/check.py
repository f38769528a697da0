"""Dataset check: every problem of every case at once, one line each, naming the file.

Run by ``seg-check-data ROOT`` and before every training run. Errors stop training; warnings
(an empty label) do not.
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seg.data.datalist import Case, DatasetSpec
from seg.io import GRID_TOL, NiftiError, read_nifti


@dataclass(frozen=True)
class Problem:
    level: str  # "error" | "warning"
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.level.upper()} {self.path}: {self.message}"


def check_dataset(spec: DatasetSpec, workers: int | None = None) -> list[Problem]:
    """Check every case of ``spec``; returns all problems (errors and warnings), in case order."""
    problems: list[Problem] = []
    if not spec.cases:
        problems.append(Problem("error", str(Path(spec.root) / "dataset.json"), "the dataset lists no training cases"))
    for cid, n in Counter(c.case_id for c in spec.cases).items():
        if n > 1:
            problems.append(Problem("error", spec.root, f"case id {cid!r} appears {n} times"))
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:  # zlib and file reads release the GIL
        for found in pool.map(lambda c: check_case(c, spec), spec.cases):
            problems.extend(found)
    return problems


def check_case(case: Case, spec: DatasetSpec) -> list[Problem]:
    """All problems of one case."""
    out: list[Problem] = []
    n_ch = spec.in_channels
    ref_shape = ref_affine = None
    for path in case.images:
        try:
            img = read_nifti(path)
        except NiftiError as e:
            out.append(Problem("error", path, str(e)))
            continue
        data = img.data
        if data.ndim == 4 and spec.channels_in_one_file:
            if data.shape[3] != n_ch:
                out.append(Problem("error", path, f"has {data.shape[3]} channels, dataset.json declares {n_ch}"))
            spatial = data.shape[:3]
        elif data.ndim == 4 and data.shape[3] == 1:
            spatial = data.shape[:3]
        elif data.ndim == 3:
            spatial = data.shape
            if spec.channels_in_one_file and n_ch > 1:
                out.append(Problem("error", path, f"is 3D but dataset.json declares {n_ch} channels in one file"))
        else:
            out.append(
                Problem(
                    "error", path, f"is {data.ndim}D with shape {list(data.shape)}; expected 3D (or 4D with channels)"
                )
            )
            continue
        if np.issubdtype(data.dtype, np.floating):
            bad = int(np.count_nonzero(~np.isfinite(data)))
            if bad:
                out.append(Problem("error", path, f"has {bad} NaN/inf voxels"))
        if ref_shape is None:
            ref_shape, ref_affine = spatial, img.affine
        else:
            if spatial != ref_shape:
                out.append(
                    Problem(
                        "error",
                        path,
                        f"channel shape {list(spatial)} differs from {list(ref_shape)} of {case.images[0]}",
                    )
                )
            elif not np.allclose(img.affine, ref_affine, atol=GRID_TOL):
                out.append(Problem("error", path, f"channel affine differs from that of {case.images[0]}"))
    if case.label is None:
        return out
    try:
        lab = read_nifti(case.label)
    except NiftiError as e:
        out.append(Problem("error", case.label, str(e)))
        return out
    ldata = lab.data
    if ldata.ndim == 4 and ldata.shape[3] == 1:
        ldata = ldata[..., 0]
    if ldata.ndim != 3:
        out.append(Problem("error", case.label, f"label is {ldata.ndim}D with shape {list(ldata.shape)}; expected 3D"))
        return out
    if ref_shape is not None:
        if tuple(ldata.shape) != tuple(ref_shape):
            out.append(
                Problem(
                    "error", case.label, f"label shape {list(ldata.shape)} differs from image shape {list(ref_shape)}"
                )
            )
        elif not np.allclose(lab.affine, ref_affine, atol=GRID_TOL):
            d = float(np.abs(lab.affine - ref_affine).max())
            out.append(Problem("error", case.label, f"label affine differs from the image's (max difference {d:.4g})"))
    if np.issubdtype(ldata.dtype, np.floating):
        if not np.all(np.isfinite(ldata)):
            out.append(Problem("error", case.label, "label has NaN/inf voxels"))
            return out
        if not np.array_equal(ldata, np.round(ldata)):
            out.append(Problem("error", case.label, "label has non-integer values"))
            return out
    values = set(np.unique(ldata).astype(np.int64).tolist())
    undeclared = sorted(values - set(spec.labels))
    if undeclared:
        out.append(
            Problem(
                "error",
                case.label,
                f"label values {undeclared} are not declared in dataset.json (declared: {sorted(spec.labels)})",
            )
        )
    if values <= {0}:
        out.append(Problem("warning", case.label, "label is empty (background only)"))
    return out


def errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.level == "error"]
