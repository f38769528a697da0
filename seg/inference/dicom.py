"""DICOM in, DICOM SEG out: seg-predict's adapter at the edge (NIfTI stays seg's own format).

In: a folder (searched recursively) or a ``.zip`` of DICOM files. Files are grouped by SeriesInstanceUID, one
case a series. A series is stacked by each slice's position along the slice normal (never by file name or
InstanceNumber) and read by SimpleITK's series reader in that order, so its grid (origin, direction,
spacing) is exactly SimpleITK's; the volume is written as a NIfTI file in a private temporary folder and
predicted like any NIfTI case. Refused with one line each (the case fails, the batch goes on): mixed
orientations, gantry tilt (or slices not stacked along their normal), unequal slice spacing or missing
slices, two slices at one position, a single slice, and pixel data no installed decoder reads. Multi-frame
objects and non-image objects (SEG, RTSTRUCT, SR, ...) are skipped with a note.

Out (``--output-format dicom-seg|both``): one DICOM Segmentation object per series, built by highdicom (which
validates the IOD as it builds it): a BINARY SEG with one segment per label of ``dataset.json``, coded with
SNOMED CT where the label's name names a structure pydicom's code dictionary knows, a neoplasm for tumour
words, else the generic "Tissue"; algorithm identification from the bundle (net, seg's version); the patient,
study and frame of reference copied from the source by highdicom, nothing else (no paths).
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seg.errors import one_line

MAGIC = b"DICM"  # at byte 128 of a DICOM Part 10 file
NEOPLASM_WORDS = ("tumor", "tumour", "neoplasm", "lesion", "meningioma", "glioma", "metasta", "cancer", "mass")


def is_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == MAGIC
    except OSError:
        return False


def has_dicom(folder: Path) -> bool:
    """Whether ``folder`` is a zip, or a folder without NIfTI files at its top that holds a DICOM file at any
    depth (the DICOM route's inputs; a NIfTI folder is not searched file by file)."""
    from seg.data.datalist import NIFTI_ENDINGS

    if folder.is_file():
        return folder.suffix.lower() == ".zip"
    if not folder.is_dir() or any(p.name.endswith(NIFTI_ENDINGS) for p in folder.iterdir()):
        return False
    return any(p.is_file() and is_dicom(p) for p in folder.rglob("*") if not p.name.startswith("."))


def unzip(archive: Path, into: Path) -> Path:
    """Extract ``archive`` into ``into`` (members that would land outside it are refused)."""
    from seg.config import UserError

    root = into.resolve()
    try:
        with zipfile.ZipFile(archive) as z:
            for m in z.infolist():
                if not (root / m.filename).resolve().is_relative_to(root):
                    raise UserError(f"{archive}: member {m.filename!r} would be written outside the extraction folder")
            z.extractall(root)
    except zipfile.BadZipFile as e:
        raise UserError(f"{archive}: not a readable zip ({one_line(e)})") from None
    return root


@dataclass
class Series:
    uid: str
    files: list[Path]  # sorted along the slice normal
    problem: str | None = None
    headers: list = field(default_factory=list)  # the files' pydicom headers (no pixels), in the same order
    slice_mm: float = 0.0  # the median step between slices along the normal


def collect(folder: Path) -> tuple[dict[str, list], list[str]]:
    """The image files of ``folder`` by SeriesInstanceUID (``(path, header)`` pairs), and the notes on what was
    skipped."""
    import pydicom

    groups: dict[str, list] = {}
    notes: list[str] = []
    for p in sorted(folder.rglob("*")):
        if p.name.startswith(".") or not p.is_file() or not is_dicom(p):
            continue
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
        except Exception as e:  # a damaged header: named, the rest goes on
            notes.append(f"{p.name}: unreadable DICOM header ({one_line(e)}): skipped")
            continue
        what = str(ds.get("Modality", "") or "no modality")
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            notes.append(f"{p.name}: a multi-frame object ({what}): not read, skipped")
        elif not all(k in ds for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows")):
            notes.append(f"{p.name}: not an image slice ({what}): skipped")
        else:
            groups.setdefault(str(ds.get("SeriesInstanceUID", "") or ""), []).append((p, ds))
    return groups, notes


def _floats(ds, key: str) -> np.ndarray:
    return np.array([float(v) for v in ds.get(key)], dtype=np.float64)


def stack(items: list) -> Series:
    """The series of ``(path, header)`` pairs sorted along the slice normal, with its one-line problem if its
    slices do not form one regular grid."""
    uid = str(items[0][1].get("SeriesInstanceUID", "") or "")
    iop = np.array([_floats(ds, "ImageOrientationPatient") for _, ds in items])
    normal = np.cross(iop[0][:3], iop[0][3:])
    pos = np.array([_floats(ds, "ImagePositionPatient") for _, ds in items])
    order = np.argsort(pos @ normal, kind="stable")
    files, headers = [items[i][0] for i in order], [items[i][1] for i in order]
    pos, d = pos[order], (pos @ normal)[order]
    gaps = np.diff(d)
    series = Series(uid, files, headers=headers, slice_mm=float(np.median(gaps)) if len(gaps) else 0.0)
    tilt = max(abs(float(ds.get("GantryDetectorTilt", 0) or 0)) for _, ds in items)
    sizes = {(int(ds.Rows), int(ds.Columns), *(round(float(v), 4) for v in ds.PixelSpacing)) for _, ds in items}
    if np.abs(iop - iop[0]).max() > 1e-4:
        series.problem = "mixed slice orientations in one series: not one volume"
    elif tilt > 0:
        series.problem = f"gantry tilt {tilt:g} degrees: not reconstructed (resample it to an untilted grid first)"
    elif len(sizes) > 1:
        series.problem = "slices of different sizes or pixel spacings in one series: not one volume"
    elif len(items) < 2:
        series.problem = "a single slice: no 3D volume to segment"
    elif (gaps < 1e-3).any():
        series.problem = f"two slices at one position ({d[1:][gaps < 1e-3][0]:.2f} mm along the normal)"
    elif np.abs((pos - pos[0]) - np.outer(d - d[0], normal)).max() > 0.01 * max(float(np.median(gaps)), 1.0):
        series.problem = "slices not stacked along their normal (a gantry-tilted or sheared series): not reconstructed"
    elif np.abs(gaps - np.median(gaps)).max() > max(0.01 * float(np.median(gaps)), 1e-3):
        series.problem = (
            f"unequal slice spacing ({gaps.min():.3g}-{gaps.max():.3g} mm) or missing slices: not one regular grid"
        )
    return series


def series_of(folder: Path) -> tuple[list[Series], list[str]]:
    groups, notes = collect(folder)
    return [stack(items) for _, items in sorted(groups.items())], notes


def to_nifti(series: Series, path: Path) -> None:
    """The series read by SimpleITK in its sorted order, written as NIfTI (SimpleITK converts LPS to RAS)."""
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage([str(f) for f in series.files])
    except RuntimeError:
        raise ValueError(_no_decoder(series)) from None
    sitk.WriteImage(img, str(path))


def _no_decoder(series: Series) -> str:
    """The line for pixel data SimpleITK's decoders do not read, naming its transfer syntax."""
    ts = series.headers[0].file_meta.get("TransferSyntaxUID")
    return f"pixel data in {getattr(ts, 'name', '') or ts} ({ts}): no installed decoder reads it"


def check(folder: Path) -> tuple[list[tuple[str, str, str]], list[str]]:
    """seg-check-data's DICOM route: ``(level, case id, line)`` per series (``ok`` with its grid, ``error``
    with the refusal seg-predict would give, ``warning`` where no SEG can reference it) and the skip notes. The
    pixels of each series' first slice are decoded, so a missing decoder is found here, not at prediction."""
    import SimpleITK as sitk

    series, notes = series_of(folder)
    out = []
    for s in series:
        cid = case_id(s)
        if s.problem is None:
            try:
                sitk.ReadImage(str(s.files[0]))
            except RuntimeError:
                s.problem = _no_decoder(s)
        if s.problem is not None:
            out.append(("error", cid, s.problem))
            continue
        ds = s.headers[0]
        grid = f"{int(ds.Columns)}x{int(ds.Rows)}x{len(s.files)} voxels"
        mm = f"{float(ds.PixelSpacing[1]):.4g}x{float(ds.PixelSpacing[0]):.4g}x{s.slice_mm:.4g} mm"
        out.append(("ok", cid, f"{len(s.files)} slices, {grid} of {mm}"))
        if (problem := seg_problem(s)) is not None:
            out.append(("warning", cid, problem))
    return out, notes


def case_id(series: Series) -> str:
    """The case (and output file) name of a series: its SeriesInstanceUID, or the first file's name."""
    return re.sub(r"[^0-9A-Za-z._-]", "_", series.uid) if series.uid else "series_" + series.files[0].stem


# -- DICOM SEG ---------------------------------------------------------------------------------------------
def segment_codes(name: str):
    """(category, type) codes of a label name: SNOMED CT where one fits, else the generic Tissue."""
    from pydicom.sr.codedict import codes

    words = name.lower()
    if any(w in words for w in NEOPLASM_WORDS):
        return codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Neoplasm
    key = "".join(part.capitalize() for part in re.split(r"[^a-z0-9]+", words) if part)
    known = getattr(codes.SCT, key, None) if key else None
    if known is not None:
        return codes.SCT.AnatomicalStructure, known
    return codes.SCT.Tissue, codes.SCT.Tissue


def seg_problem(series: Series) -> str | None:
    """Why no SEG can reference this series (an anonymisation that blanked its UIDs), or None."""
    ds = series.headers[0]
    blank = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID") if not str(ds.get(k, "") or "")]
    if blank:
        return (
            f"{', '.join(blank)} blank (anonymised without UIDs): no DICOM SEG can reference these images "
            "(--output-format nifti predicts it)"
        )
    return None


def write_seg(series: Series, labels: np.ndarray, names: dict[int, str], path: Path, algorithm: tuple[str, str]):
    """A DICOM SEG of ``labels`` (the mask on the series' NIfTI grid, nibabel's ``[column, row, slice]`` order)
    over the series' images, written atomically to ``path``."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from seg.io import atomic_write_bytes

    sources = series.headers  # read once, by collect()
    for ds in sources:  # a blank SOP Class UID beside a stated one in the file meta: the file meta's
        if not str(ds.get("SOPClassUID", "") or ""):
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ids = sorted(i for i in names if i != 0)
    lut = np.zeros(max([0, *ids, int(labels.max(initial=0))]) + 1, dtype=np.uint16)
    lut[ids] = np.arange(1, len(ids) + 1)
    frames = lut[np.transpose(labels, (2, 1, 0))]  # frame k = slice k: rows, columns
    family = codes.DCM.ArtificialIntelligence
    ident = hd.AlgorithmIdentificationSequence(name=algorithm[0], family=family, version=algorithm[1])
    descriptions = []
    for number, i in enumerate(ids, start=1):
        category, kind = segment_codes(names[i])
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=names[i][:64],
                segmented_property_category=category,
                segmented_property_type=kind,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=ident,
            )
        )
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames.astype(np.uint8 if len(ids) < 256 else np.uint16),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=int(sources[0].get("SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="seg",
        manufacturer_model_name=algorithm[0][:64],
        software_versions=algorithm[1],
        device_serial_number="none",
        series_description=f"{algorithm[0]} segmentation"[:64],
        omit_empty_frames=False,
    )
    atomic_write_bytes(path, lambda tmp: seg.save_as(tmp, enforce_file_format=True))
