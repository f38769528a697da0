"""Input discovery for ``seg-predict``: a NIfTI file, a folder of them, nnU-Net channel files, or DICOM series
(a folder or zip of DICOM files: :mod:`seg.inference.dicom`)."""

from __future__ import annotations

import atexit
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seg.data.datalist import NIFTI_ENDINGS, case_id_from_path
from seg.io import GRID_TOL, NiftiError, read_nifti

log = logging.getLogger(__name__)

CHANNEL = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")


@dataclass
class InputCase:
    case_id: str
    files: list[str]
    problem: str | None = None  # set when the case cannot be predicted
    output_name: str = ""  # file name of the mask (the input case's own name)
    extra: dict = field(default_factory=dict)


NOT_NIFTI = (".mha", ".mhd", ".nrrd", ".nhdr", ".dcm", ".mgz", ".mnc", ".img", ".hdr", ".tif", ".tiff")
SPACING_MM = (0.1, 20.0)  # outside this a voxel size is implausible for a clinical volume
MIN_AXIS = 4  # fewer voxels along an axis than this: not a 3D volume worth segmenting


def _is_nifti(p: Path) -> bool:
    # hidden names are never inputs: seg's own temporaries are ".<name>.<random>.part.nii.gz"
    return p.is_file() and p.name.endswith(NIFTI_ENDINGS) and not p.name.startswith(".")


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8, kept by Python as surrogates
        return False
    return True


def _ending(p: Path) -> str:
    return ".nii.gz" if p.name.endswith(".nii.gz") else ".nii"


def _listing(input_path: Path) -> tuple[list[Path], list[InputCase]]:
    """The NIfTI files of the input, and the entries named in one line each instead: images in another format,
    and what is named like NIfTI but is no regular file (a folder, a broken link, a pipe)."""
    from seg.config import UserError

    if _is_nifti(input_path):
        return [input_path], []
    if input_path.is_file():
        raise UserError(f"{input_path}: not a NIfTI file (.nii, .nii.gz); convert it first (e.g. with SimpleITK)")
    if not input_path.is_dir():
        raise UserError(f"{input_path}: no such NIfTI file or folder")
    entries = [p for p in sorted(input_path.iterdir()) if not p.name.startswith(".")]
    named: list[InputCase] = []
    for p in [p for p in entries if not _utf8(p.name)]:  # its name could be written in no report or summary
        shown = p.name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        problem = f"{shown}: the file name is not UTF-8 text; rename it"
        named.append(InputCase(case_id_from_path(Path(shown)), [str(p.parent / shown)], problem, shown))
    entries = [p for p in entries if _utf8(p.name)]
    for p in entries:
        if p.is_file() and p.name.lower().endswith(NOT_NIFTI):
            named.append(
                InputCase(
                    case_id_from_path(p), [str(p)], f"{p.name}: not NIfTI (.nii, .nii.gz); convert it first", p.name
                )
            )
        elif p.name.endswith(NIFTI_ENDINGS) and not p.is_file():
            kind = (
                "a folder"
                if p.is_dir()
                else "a broken link"
                if p.is_symlink() and not p.exists()
                else "no regular file"
            )
            named.append(InputCase(case_id_from_path(p), [str(p)], f"{p.name}: {kind}, not a NIfTI file", p.name))
    return [p for p in entries if _is_nifti(p)], named


def _group(files: list[Path], n_channels: int) -> list[InputCase]:
    """Files named ``CASE_0000`` ... form one multi-channel case; any other file is a single-channel case."""
    grouped: dict[str, dict[int, Path]] = {}
    cases = []
    matches = [CHANNEL.match(case_id_from_path(f)) for f in files]
    firsts = {m.group("case") for m in matches if m and m.group("ch") == "0000"}
    for f, m in zip(files, matches):
        # a 1-channel model: CASE_0001 beside CASE_0000 is a second channel (refused), not a second patient
        if m and (n_channels > 1 or m.group("case") in firsts):
            grouped.setdefault(m.group("case"), {})[int(m.group("ch"))] = f
        else:
            cid = case_id_from_path(f)
            problem = (
                None
                if n_channels == 1
                else f"the model needs {n_channels} channel files ({cid}_0000 ...), got one file"
            )
            cases.append(InputCase(cid, [str(f)], problem, f.name))
    for cid, chans in sorted(grouped.items()):
        first = next(iter(chans.values()))
        missing = [c for c in range(n_channels) if c not in chans]
        extra = sorted(set(chans) - set(range(n_channels)))
        problem = None
        if missing:
            names = ", ".join(f"{cid}_{c:04d}" for c in missing)
            problem = f"channel file(s) {names} missing (the model needs {n_channels})"
        elif extra:
            names = ", ".join(f"{cid}_{c:04d}" for c in extra)
            what = "channel" if n_channels == 1 else "channels"
            problem = (
                f"unexpected channel file(s) {names}: the model takes {n_channels} {what} (is it another model's?)"
            )
        cases.append(InputCase(cid, [str(chans[c]) for c in sorted(chans)], problem, cid + _ending(first)))
    return sorted(cases, key=lambda c: (c.case_id, c.files[0]))


def dicom_cases(path: Path, n_channels: int, output_format: str = "nifti") -> list[InputCase]:
    """One case per DICOM series of ``path`` (a folder or a zip), each converted to NIfTI in a private folder
    removed at exit; ``extra["dicom"]`` keeps the series for the SEG. A series that cannot be read as one
    regular volume (or referenced by a SEG, when one is asked for) is a case with its ``problem`` set."""
    from seg.config import UserError
    from seg.inference import dicom

    work = Path(tempfile.mkdtemp(prefix="seg_dicom_"))
    atexit.register(shutil.rmtree, work, True)
    series, notes = dicom.series_of(dicom.unzip(path, work / "zip") if path.is_file() else path)
    for note in notes:
        log.warning("%s", note)
    if not series:
        raise UserError(f"{path}: no DICOM image series found ({len(notes)} objects skipped)")
    cases = []
    for s in series:
        cid = dicom.case_id(s)
        problem = s.problem or (
            f"the model needs {n_channels} channels, a DICOM series is one" if n_channels != 1 else None
        )
        if problem is None and output_format != "nifti":
            problem = dicom.seg_problem(s)
        nifti = work / f"{cid}.nii.gz"
        if problem is None:
            try:
                dicom.to_nifti(s, nifti)
            except ValueError as e:
                problem = str(e)
        name = f"{cid}.seg.dcm" if output_format == "dicom-seg" else f"{cid}.nii.gz"
        extra = {"dicom": s, "source": str(s.files[0].parent)}
        cases.append(InputCase(cid, [str(nifti)], problem, name, extra))
    return cases


def discover(input_path: str | Path, n_channels: int, output_format: str = "nifti") -> list[InputCase]:
    """Group the input into cases. Files named ``CASE_0000`` ... ``CASE_{n-1:04d}`` form one multi-channel
    case (nnU-Net's habit); any other NIfTI file is a single-channel case; a folder or zip of DICOM files is
    a case per series (:func:`dicom_cases`). A case that cannot be predicted (a channel missing, two inputs
    with one case id or one output name, an image in another format, an entry that is no regular file) is
    returned with its ``problem`` set, so the batch reports it beside the others."""
    from seg.inference.dicom import has_dicom

    if has_dicom(Path(input_path)):
        return dicom_cases(Path(input_path), n_channels, output_format)
    files, named = _listing(Path(input_path))
    cases = _group(files, n_channels)
    for key in ("case_id", "output_name"):  # one case per id, one output file per case
        by: dict[str, list[InputCase]] = {}
        for c in cases:
            by.setdefault(getattr(c, key), []).append(c)
        for value, same in by.items():
            if len(same) > 1:
                names = ", ".join(Path(c.files[0]).name for c in same)
                what = "case id" if key == "case_id" else "output name"
                for c in same:
                    c.problem = f"{what} {value!r} is given by {len(same)} inputs ({names}): rename or remove one"
    return cases + named


def check_volume(name: str, v) -> tuple[str | None, list[str]]:
    """(problem, warnings) of one loaded volume: what makes it unusable, and what makes it implausible."""
    d = v.data
    if d.ndim == 4 and d.shape[3] == 1:
        d = d[..., 0]
    if d.ndim != 3:
        return f"{name}: is {v.data.ndim}D with shape {list(v.data.shape)}; expected a 3D volume", []
    if not (np.issubdtype(d.dtype, np.integer) or np.issubdtype(d.dtype, np.floating) or d.dtype == bool):
        return f"{name}: data type {d.dtype} is not supported (integers or floats)", []
    if np.issubdtype(d.dtype, np.floating) and not np.isfinite(d).all():
        return f"{name}: has {int((~np.isfinite(d)).sum())} NaN/inf voxels", []
    if abs(float(np.linalg.det(v.affine[:3, :3]))) < 1e-9:
        return f"{name}: its affine is singular (no grid to put the mask on)", []
    warnings = []
    lo, hi = float(d.min()), float(d.max())
    if lo == hi:
        warnings.append(f"{name}: every voxel is {lo:g} (empty or constant): its mask will be background")
    if min(d.shape) < MIN_AXIS:
        warnings.append(f"{name}: shape {list(d.shape)} has an axis of fewer than {MIN_AXIS} voxels")
    zooms = [float(z) for z in v.header.get_zooms()[:3]]
    if any(not SPACING_MM[0] <= z <= SPACING_MM[1] for z in zooms):
        warnings.append(f"{name}: spacing {zooms} mm is outside {SPACING_MM[0]}-{SPACING_MM[1]} mm: check its header")
    return None, warnings


def validate(case: InputCase) -> tuple[str | None, list[str]]:
    """``(problem, warnings)`` of a case's files: unreadable, wrong rank, unsupported type, NaN/inf, singular
    affine or channel grids that differ are problems; empty/constant volumes, thin axes and implausible
    spacings are warnings (predicted, with one line each)."""
    if case.problem:
        return case.problem, []
    shape = affine = None
    warnings: list[str] = []
    for f in case.files:
        try:
            v = read_nifti(f)
        except NiftiError as e:
            return f"{Path(f).name}: {e}", warnings
        problem, w = check_volume(Path(f).name, v)
        warnings += w
        if problem:
            return problem, warnings
        d = v.data[..., 0] if v.data.ndim == 4 else v.data
        if shape is None:
            shape, affine = d.shape, v.affine
        elif d.shape != shape or not np.allclose(v.affine, affine, atol=GRID_TOL):
            return f"{Path(f).name}: grid differs from {Path(case.files[0]).name}", warnings
    return None, warnings
