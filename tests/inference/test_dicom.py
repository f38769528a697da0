"""DICOM in, DICOM SEG out (#42): series read on SimpleITK's grid, stacked by position, refused in one line
where they are not one regular volume; SEGs that pass dciodvfy and read back equal to the NIfTI masks, in
every orientation the field meets (the mirror-bug class: negated cosines)."""

from __future__ import annotations

import shutil
import subprocess
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from seg.cli.predict import main
from seg.inference import dicom
from tests.conftest import shared
from tests.inference.conftest import make_bundle

LABELS = {0: "background", 1: "liver", 2: "tumour"}
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("dcm") / "model", labels=LABELS, folds=(0,))


def _volume(shape=(40, 36, 24)) -> np.ndarray:
    """An asymmetric volume (a ramp along each axis and a bright corner block) as int16 CT values."""
    i, j, k = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    v = (i * 7 + j * 3 + k * 11).astype(np.int16)
    v[:8, :6, :4] += 900
    return v


def write_series(folder: Path, vol: np.ndarray, row, col, spacing=(0.8, 0.9, 2.0), origin=(-20.0, 30.0, 50.0), **tags):
    """A CT series of ``vol`` (``[column, row, slice]``) with row/column cosines ``row``/``col`` (LPS), slice k
    at origin + k * spacing[2] * (row x col); ``tags``: per-series overrides, or callables of the slice index."""
    import highdicom as hd
    import pydicom
    from pydicom.dataset import FileMetaDataset

    folder.mkdir(parents=True, exist_ok=True)
    row, col = np.asarray(row, float) / np.linalg.norm(row), np.asarray(col, float) / np.linalg.norm(col)
    normal = np.cross(row, col)
    study, series, frame = hd.UID(), hd.UID(), hd.UID()
    for k in range(vol.shape[2]):
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE
        ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE, hd.UID()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Patient", "T1", "", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = (
            "20260101",
            "",
            "1",
            "",
            "",
        )
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer = "CT", 3, k + 1, "test"
        ds.ImageOrientationPatient = [*row.tolist(), *col.tolist()]
        ds.ImagePositionPatient = (np.asarray(origin) + k * spacing[2] * normal).tolist()
        ds.PixelSpacing, ds.SliceThickness = [spacing[1], spacing[0]], spacing[2]
        ds.Rows, ds.Columns = vol.shape[1], vol.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.ImageType = 0, 1, ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PixelData = np.ascontiguousarray(vol[:, :, k].T).astype(np.int16).tobytes()
        for key, value in tags.items():
            setattr(ds, key, value(k) if callable(value) else value)
        ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    return folder


ORIENTATIONS = {
    "axial": ([1, 0, 0], [0, 1, 0]),
    "sagittal": ([0, 1, 0], [0, 0, -1]),
    "coronal": ([1, 0, 0], [0, 0, -1]),
    "oblique": (
        [np.cos(0.35), np.sin(0.35), 0],
        [-np.sin(0.35) * np.cos(0.4), np.cos(0.35) * np.cos(0.4), -np.sin(0.4)],
    ),
    "negated-cosines": ([-1, 0, 0], [0, -1, 0]),
}


@pytest.mark.parametrize("name", ORIENTATIONS)
def test_every_orientation_lands_on_the_patients_own_points(tmp_path, name):
    """Each DICOM pixel's patient position (IPP + c * column spacing * row cosine + r * row spacing * column
    cosine) holds, in the NIfTI volume, the same value: no axis mirrored or swapped."""
    vol = _volume()
    row, col = ORIENTATIONS[name]
    folder = write_series(tmp_path / "s", vol, row, col)
    [series], notes = dicom.series_of(folder)
    assert series.problem is None and notes == []
    dicom.to_nifti(series, tmp_path / "v.nii.gz")
    img = nib.load(tmp_path / "v.nii.gz")
    data, inv = np.asarray(img.dataobj), np.linalg.inv(img.affine)
    row, col = np.asarray(row, float) / np.linalg.norm(row), np.asarray(col, float) / np.linalg.norm(col)
    rng = np.random.default_rng(0)
    for c, r, k in zip(rng.integers(0, 40, 50), rng.integers(0, 36, 50), rng.integers(0, 24, 50)):
        lps = np.array([-20.0, 30.0, 50.0]) + k * 2.0 * np.cross(row, col) + c * 0.8 * row + r * 0.9 * col
        ras = lps * [-1, -1, 1]
        ijk = np.rint(inv[:3, :3] @ ras + inv[:3, 3]).astype(int)
        assert data[tuple(ijk)] == vol[c, r, k], (name, c, r, k)
    np.testing.assert_array_equal(data, vol)  # voxel (i, j, k) is slice k's column i, row j: SEG frames use it


def _read_back(seg_path: Path, series: dicom.Series, ids: list[int]) -> np.ndarray:
    """The SEG's label map in the series' order, as label ids (highdicom reads it; frames by source instance)."""
    import highdicom as hd
    import pydicom

    seg = hd.seg.segread(seg_path)
    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in series.files]
    numbers = seg.get_pixels_by_source_instance(uids, combine_segments=True)  # [frames, rows, columns]
    return np.asarray([0, *ids])[numbers]


def _dciodvfy_errors(path: Path) -> list[str]:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian's dicom3tools) is not installed")
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [x for x in (out.stdout + out.stderr).splitlines() if x.startswith("Error")]


@pytest.mark.parametrize("name", ORIENTATIONS)
def test_seg_frames_hold_the_nifti_mask_and_pass_dciodvfy(tmp_path, name):
    """The SEG's frame k, row r, column c is the NIfTI mask's voxel (c, r, k): with the index identity above,
    each segment pixel lies on the patient point of its source pixel, in every orientation."""
    folder = write_series(tmp_path / "in", _volume(), *ORIENTATIONS[name])
    [series], _ = dicom.series_of(folder)
    dicom.to_nifti(series, tmp_path / "v.nii.gz")
    shape = nib.load(tmp_path / "v.nii.gz").shape
    labels = np.random.default_rng(1).integers(0, 3, shape).astype(np.uint8)  # every label, no symmetry
    seg_path = tmp_path / "out" / "x.seg.dcm"
    dicom.write_seg(series, labels, LABELS, seg_path, ("seg unet", "0.1.0"))
    np.testing.assert_array_equal(_read_back(seg_path, series, [1, 2]), np.transpose(labels, (2, 1, 0)))
    assert _dciodvfy_errors(seg_path) == []


def _predict_both_and_check(bundle, folder: Path, out: Path) -> str:
    """seg-predict --output-format both on one series: the SEG reads back equal to the NIfTI mask and passes
    dciodvfy. Returns the case id."""
    assert main(["-i", str(folder), "-o", str(out), "-m", str(bundle), "-q", "--output-format", "both"]) == 0
    [series], _ = dicom.series_of(folder)
    cid = dicom.case_id(series)
    mask = np.asarray(nib.load(out / f"{cid}.nii.gz").dataobj)
    np.testing.assert_array_equal(_read_back(out / f"{cid}.seg.dcm", series, [1, 2]), np.transpose(mask, (2, 1, 0)))
    assert _dciodvfy_errors(out / f"{cid}.seg.dcm") == []
    return cid


def test_predict_writes_nifti_and_seg_for_a_series(bundle, tmp_path):
    folder = write_series(tmp_path / "in", _volume(), *ORIENTATIONS["oblique"])
    out = tmp_path / "out"
    cid = _predict_both_and_check(bundle, folder, out)
    raw = (out / f"{cid}.seg.dcm").read_bytes()
    assert str(tmp_path).encode() not in raw and b"/tmp" not in raw  # no local path leaks
    only = tmp_path / "seg_only"
    assert main(["-i", str(folder), "-o", str(only), "-m", str(bundle), "-q", "--output-format", "dicom-seg"]) == 0
    assert sorted(p.name for p in only.iterdir() if not p.name.startswith(".")) == sorted(
        [f"{cid}.json", f"{cid}.seg.dcm", "summary.csv"]
    )


def test_segment_codes_snomed_where_one_fits():
    assert [c.value for c in dicom.segment_codes("Liver")] == ["91723000", "10200004"]
    assert [c.value for c in dicom.segment_codes("left atrium")] == ["91723000", "82471001"]
    assert [c.value for c in dicom.segment_codes("meningioma")] == ["49755003", "108369006"]
    assert [c.value for c in dicom.segment_codes("label_3")] == ["85756007", "85756007"]


# -- the real series ---------------------------------------------------------------------------------------
def _real() -> Path:
    d = shared("dicom/ct_series")
    if not d.is_dir():
        pytest.skip("../shared/data/dicom/ct_series is not here")
    return d


def test_real_series_is_stacked_and_gridded_as_simpleitk_reads_it(tmp_path):
    import SimpleITK as sitk

    real = _real()
    [series], notes = dicom.series_of(real)
    assert notes == [] and series.problem is None
    assert [str(f) for f in series.files] == list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(real)))
    dicom.to_nifti(series, tmp_path / "ct.nii.gz")
    ref = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(real)))
    lps = np.asarray(ref.GetDirection()).reshape(3, 3) * np.asarray(ref.GetSpacing())
    want = np.eye(4)
    want[:3, :3], want[:3, 3] = np.diag([-1, -1, 1]) @ lps, np.diag([-1, -1, 1]) @ np.asarray(ref.GetOrigin())
    img = nib.load(tmp_path / "ct.nii.gz")
    assert img.shape == (512, 512, 20)
    np.testing.assert_allclose(img.affine, want, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(img.dataobj), sitk.GetArrayFromImage(ref).transpose(2, 1, 0))


def test_real_series_predicts_on_its_grid_and_its_blank_uids_refuse_a_seg(bundle, tmp_path, capsys):
    real = _real()
    assert main(["-i", str(real), "-o", str(tmp_path / "n"), "-m", str(bundle), "-q"]) == 0
    [mask] = list((tmp_path / "n").glob("*.nii.gz"))
    assert nib.load(mask).shape == (512, 512, 20)
    capsys.readouterr()
    assert main(["-i", str(real), "-o", str(tmp_path / "b"), "-m", str(bundle), "-q", "--output-format", "both"]) == 1
    err = capsys.readouterr().err
    assert "StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID blank (anonymised without UIDs)" in err
    assert not list((tmp_path / "b").glob("*.nii.gz")) and not list((tmp_path / "b").glob("*.dcm"))


def test_real_series_with_its_uids_gives_a_valid_seg(bundle, tmp_path):
    """The real (JPEG 2000) series as a PACS holds it, UIDs filled in: the SEG passes dciodvfy, reads back equal."""
    import highdicom as hd
    import pydicom

    src = tmp_path / "in"
    src.mkdir()
    study, series_uid = hd.UID(), hd.UID()
    for f in sorted(_real().glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series_uid, hd.UID()
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(src / f.name)
    _predict_both_and_check(bundle, src, tmp_path / "out")


# -- refusals: one line each, the batch goes on -------------------------------------------------------------
def _tilted(folder):
    return write_series(folder, _volume(), [1, 0, 0], [0, 1, 0], GantryDetectorTilt=15)


def _sheared(folder):
    return write_series(
        folder, _volume(), [1, 0, 0], [0, 1, 0], ImagePositionPatient=lambda k: [k * 1.0, 30, 50 + 2 * k]
    )


def _gap(folder):
    write_series(folder, _volume(), [1, 0, 0], [0, 1, 0])
    [series], _ = dicom.series_of(folder)
    series.files[10].unlink()
    return folder


def _mixed(folder):
    return write_series(
        folder, _volume(), [1, 0, 0], [0, 1, 0],
        ImageOrientationPatient=lambda k: [1, 0, 0, 0, 1, 0] if k != 5 else [1, 0, 0, 0, 0.9998, 0.02],
    )  # fmt: skip


def _duplicate(folder):
    return write_series(
        folder, _volume(), [1, 0, 0], [0, 1, 0], ImagePositionPatient=lambda k: [0, 0, 2.0 * min(k, 20)]
    )


def _undecodable(folder):
    import pydicom

    write_series(folder, _volume(), [1, 0, 0], [0, 1, 0])
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder for it here
        ds.PixelData = pydicom.encaps.encapsulate([b"\x00\x01" * 64])
        ds["PixelData"].VR = "OB"
        ds.save_as(f, enforce_file_format=True)
    return folder


REFUSALS = [
    ("gantry-tilt", _tilted, "gantry tilt 15 degrees"),
    ("sheared-stack", _sheared, "not stacked along their normal"),
    ("missing-slice", _gap, "unequal slice spacing (2-4 mm) or missing slices"),
    ("mixed-orientations", _mixed, "mixed slice orientations"),
    ("two-slices-one-position", _duplicate, "two slices at one position"),
    ("no-decoder", _undecodable, "no installed decoder reads it"),
]


@pytest.mark.parametrize("name, make, needle", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_a_series_that_is_not_one_regular_volume_fails_alone(bundle, tmp_path, capsys, name, make, needle):
    inp = tmp_path / "in"
    make(inp / "bad")
    write_series(inp / "good", _volume(), [1, 0, 0], [0, 1, 0])
    out = tmp_path / "out"
    rc = main(["-i", str(inp), "-o", str(out), "-m", str(bundle), "-q"])
    err = capsys.readouterr().err
    failed = [x for x in err.splitlines() if x.startswith("FAILED") and needle in x]
    assert rc == 1 and len(failed) == 1 and "Traceback" not in err, err[-3000:]
    assert len(list(out.glob("*.nii.gz"))) == 1  # the good series is predicted


def test_non_image_and_multi_frame_objects_are_skipped_with_a_note(bundle, tmp_path, caplog):
    import pydicom

    folder = write_series(tmp_path / "in" / "s", _volume(), [1, 0, 0], [0, 1, 0])
    first = sorted(folder.iterdir())[0]
    ds = pydicom.dcmread(first)
    ds.NumberOfFrames = 2
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds.save_as(tmp_path / "in" / "multi.dcm", enforce_file_format=True)
    for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "PixelData"):
        delattr(ds, k)
    ds.Modality, ds.NumberOfFrames = "SR", 1
    ds.save_as(tmp_path / "in" / "report.dcm", enforce_file_format=True)
    (tmp_path / "in" / "notes.txt").write_text("not dicom")
    assert main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(bundle), "-q"]) == 0
    text = caplog.text
    assert "multi.dcm: a multi-frame object (CT): not read, skipped" in text
    assert "report.dcm: not an image slice (SR): skipped" in text


def test_zip_input_and_a_zip_that_escapes(bundle, tmp_path, capsys):
    folder = write_series(tmp_path / "s", _volume(), [1, 0, 0], [0, 1, 0])
    with zipfile.ZipFile(tmp_path / "series.zip", "w") as z:
        for f in folder.iterdir():
            z.write(f, f"export/{f.name}")
    assert main(["-i", str(tmp_path / "series.zip"), "-o", str(tmp_path / "out"), "-m", str(bundle), "-q"]) == 0
    assert len(list((tmp_path / "out").glob("*.nii.gz"))) == 1
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as z:
        z.writestr("../../escaped.dcm", b"x")
    assert main(["-i", str(tmp_path / "evil.zip"), "-o", str(tmp_path / "out2"), "-m", str(bundle), "-q"]) == 2
    assert "would be written outside the extraction folder" in capsys.readouterr().err


def test_dicom_seg_output_is_refused_for_nifti_input(bundle, synth_root, tmp_path, capsys):
    args = ["-i", str(synth_root / "imagesTr"), "-o", str(tmp_path / "o"), "-m", str(bundle), "--output-format", "both"]
    assert main([*args, "-q"]) == 2
    assert "--output-format both is for DICOM input; this input is NIfTI" in capsys.readouterr().err


def test_check_data_reads_a_dicom_folder_as_seg_predict_would(tmp_path, capsys):
    """#42: seg-check-data on DICOM: a line per series (its grid, or the refusal seg-predict would give, the
    decoder found missing here), the skipped objects as notes, exit 1 on any refusal; the real series is one
    case whose blank UIDs are a warning (NIfTI output only) and the next command says so."""
    from seg.cli.check_data import main as check

    inp = tmp_path / "in"
    write_series(inp / "good", _volume(), [1, 0, 0], [0, 1, 0])
    assert check([str(inp)]) == 0
    out = capsys.readouterr().out
    assert "40x36x24 voxels of 0.8x0.9x2 mm" in out and "1 series (DICOM), 0 errors, 0 warnings" in out
    assert out.strip().endswith(f"next: seg-predict -m MODEL -i {inp} -o OUTPUT --output-format both")
    _tilted(inp / "tilted")
    _undecodable(inp / "mpeg")
    (inp / "good" / "notes.txt").write_text("not dicom")
    assert check([str(inp)]) == 1
    cap = capsys.readouterr()
    assert sum(x.startswith("ERROR ") for x in cap.err.splitlines()) == 2 and "Traceback" not in cap.err
    assert "gantry tilt 15 degrees" in cap.err and "no installed decoder reads it" in cap.err
    assert "3 series (DICOM), 2 errors" in cap.out and "next:" not in cap.out
    if shared("dicom/ct_series").is_dir():
        assert check([str(_real())]) == 0
        out = capsys.readouterr().out
        assert "20 slices, 512x512x20 voxels of 0.9766x0.9766x2 mm" in out and "WARNING" in out
        assert out.strip().endswith("-o OUTPUT")  # no --output-format both: no SEG can reference it
