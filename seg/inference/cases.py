"""Input discovery for ``seg-predict``: a NIfTI file, a folder of them, or nnU-Net channel files."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seg.data.datalist import NIFTI_ENDINGS, case_id_from_path
from seg.io import GRID_TOL, NiftiError, read_nifti

CHANNEL = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")


@dataclass
class InputCase:
    case_id: str
    files: list[str]
    problem: str | None = None  # set when the case cannot be predicted
    output_name: str = ""  # file name of the mask (the input case's own name)
    extra: dict = field(default_factory=dict)


def _is_nifti(p: Path) -> bool:
    return p.is_file() and p.name.endswith(NIFTI_ENDINGS)


def _ending(p: Path) -> str:
    return ".nii.gz" if p.name.endswith(".nii.gz") else ".nii"


def discover(input_path: str | Path, n_channels: int) -> list[InputCase]:
    """Group the input into cases. Files named ``CASE_0000`` ... ``CASE_{n-1:04d}`` form one multi-channel
    case (nnU-Net's habit); any other NIfTI file is a single-channel case. A case with a channel missing
    is returned with its ``problem`` set."""
    input_path = Path(input_path)
    if _is_nifti(input_path):
        files = [input_path]
    elif input_path.is_dir():
        files = sorted(p for p in input_path.iterdir() if _is_nifti(p))
    else:
        raise FileNotFoundError(f"{input_path}: no such NIfTI file or folder")
    grouped: dict[str, dict[int, Path]] = {}
    single: list[Path] = []
    for f in files:
        m = CHANNEL.match(case_id_from_path(f))
        if m and (n_channels > 1 or m.group("ch") == "0000"):
            grouped.setdefault(m.group("case"), {})[int(m.group("ch"))] = f
        else:
            single.append(f)
    cases = []
    for cid, chans in sorted(grouped.items()):
        first = next(iter(chans.values()))
        missing = [c for c in range(n_channels) if c not in chans]
        extra = sorted(set(chans) - set(range(n_channels)))
        problem = None
        if missing:
            problem = (
                f"channel file(s) {', '.join(f'{cid}_{c:04d}' for c in missing)} missing (the model needs {n_channels})"
            )
        elif extra:
            names = ", ".join(f"{cid}_{c:04d}" for c in extra)
            problem = f"unexpected channel file(s) {names} (the model takes {n_channels})"
        files_ = [str(chans[c]) for c in sorted(chans)]
        cases.append(InputCase(cid, files_, problem, cid + _ending(first)))
    for f in single:
        cid = case_id_from_path(f)
        problem = (
            None if n_channels == 1 else f"the model needs {n_channels} channel files ({cid}_0000 ...), got one file"
        )
        cases.append(InputCase(cid, [str(f)], problem, f.name))
    return cases


def validate(case: InputCase) -> str | None:
    """One-line problem of a case's files (unreadable, wrong rank, NaN/inf, channel grids differ), or None."""
    if case.problem:
        return case.problem
    shape = affine = None
    for f in case.files:
        try:
            v = read_nifti(f)
        except NiftiError as e:
            return f"{Path(f).name}: {e}"
        d = v.data
        if d.ndim == 4 and d.shape[3] == 1:
            d = d[..., 0]
        if d.ndim != 3:
            return f"{Path(f).name}: is {v.data.ndim}D with shape {list(v.data.shape)}; expected a 3D volume"
        if np.issubdtype(d.dtype, np.floating) and not np.isfinite(d).all():
            return f"{Path(f).name}: has {int((~np.isfinite(d)).sum())} NaN/inf voxels"
        if shape is None:
            shape, affine = d.shape, v.affine
        elif d.shape != shape or not np.allclose(v.affine, affine, atol=GRID_TOL):
            return f"{Path(f).name}: grid differs from {Path(case.files[0]).name}"
    return None
