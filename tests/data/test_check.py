from __future__ import annotations

import json

import nibabel as nib
import numpy as np

from seg.cli.check_data import main as check_main
from seg.data.check import check_dataset, errors
from seg.data.datalist import load_dataset


def _save(arr, affine, path):
    nib.save(nib.Nifti1Image(arr, affine), str(path))


def _damage(root):
    """Damage one case per problem kind; returns {case_id: expected message fragment}."""
    img_dir, lab_dir = root / "imagesTr", root / "labelsTr"

    def aff(cid):
        return nib.load(str(img_dir / f"{cid}.nii.gz")).affine

    shape = (32, 32, 32)
    # truncated gzip
    raw = (img_dir / "synth_000.nii.gz").read_bytes()
    (img_dir / "synth_000.nii.gz").write_bytes(raw[: len(raw) // 2])
    # 2D image
    _save(np.zeros((32, 32), np.float32), aff("synth_001"), img_dir / "synth_001.nii.gz")
    # NaN voxels
    a = nib.load(str(img_dir / "synth_002.nii.gz")).get_fdata().astype(np.float32)
    a[0, 0, :3] = np.nan
    _save(a, aff("synth_002"), img_dir / "synth_002.nii.gz")
    # label shape differs
    _save(np.zeros((30, 32, 32), np.uint8), aff("synth_003"), lab_dir / "synth_003.nii.gz")
    # label affine differs
    lab = nib.load(str(lab_dir / "synth_004.nii.gz")).get_fdata().astype(np.uint8)
    aff2 = aff("synth_004").copy()
    aff2[0, 3] += 5.0
    _save(lab, aff2, lab_dir / "synth_004.nii.gz")
    # undeclared label value
    lab5 = np.zeros(shape, np.uint8)
    lab5[1, 1, 1] = 7
    _save(lab5, aff("synth_005"), lab_dir / "synth_005.nii.gz")
    # empty label: warning only
    _save(np.zeros(shape, np.uint8), aff("synth_006"), lab_dir / "synth_006.nii.gz")
    # missing file
    (img_dir / "synth_007.nii.gz").unlink()
    return {
        "synth_000": ("imagesTr/synth_000", "truncated"),
        "synth_001": ("imagesTr/synth_001", "is 2D"),
        "synth_002": ("imagesTr/synth_002", "3 NaN/inf voxels"),
        "synth_003": ("labelsTr/synth_003", "label shape [30, 32, 32] differs"),
        "synth_004": ("labelsTr/synth_004", "label affine differs"),
        "synth_005": ("labelsTr/synth_005", "label values [7] are not declared"),
        "synth_007": ("imagesTr/synth_007", "file is missing"),
    }


def test_check_reports_every_bad_case_at_once(synth_copy):
    expected = _damage(synth_copy)
    problems = check_dataset(load_dataset(synth_copy))
    errs = errors(problems)
    for cid, (path_part, fragment) in expected.items():
        hits = [p for p in errs if path_part in p.path and fragment in p.message]
        assert hits, f"no error for {cid}: {fragment!r}; got {[str(p) for p in errs]}"
    warnings = [p for p in problems if p.level == "warning"]
    assert any("synth_006" in p.path and "empty" in p.message for p in warnings)
    assert not any("synth_006" in p.path for p in errs)


def test_check_cli_one_line_per_problem_and_exit_code(synth_copy, capsys):
    expected = _damage(synth_copy)
    code = check_main([str(synth_copy)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == len(expected)
    for line in err:
        assert line.startswith("ERROR ") and str(synth_copy) in line


def test_check_cli_clean_dataset_exits_zero(synth_root, capsys):
    assert check_main([str(synth_root)]) == 0
    assert "0 errors" in capsys.readouterr().out


def test_check_cli_missing_dataset_json(tmp_path, capsys):
    assert check_main([str(tmp_path)]) == 2  # nothing to check: refused
    err = capsys.readouterr().err
    assert "dataset.json not found" in err and str(tmp_path) in err


def test_check_multichannel_nnunet_channel_missing(tmp_path):
    aff = np.diag([1.5, 1.5, 2.0, 1.0])
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    for c in ("a", "b"):
        for ch in range(2):
            if (c, ch) != ("b", 1):
                _save(np.random.rand(8, 9, 10).astype(np.float32), aff, tmp_path / "imagesTr" / f"{c}_{ch:04d}.nii.gz")
        _save(np.zeros((8, 9, 10), np.uint8), aff, tmp_path / "labelsTr" / f"{c}.nii.gz")
    (tmp_path / "dataset.json").write_text(
        json.dumps(
            {"channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0, "x": 1}, "file_ending": ".nii.gz"}
        )
    )
    errs = errors(check_dataset(load_dataset(tmp_path)))
    assert [(p.path.endswith("b_0001.nii.gz"), p.message) for p in errs] == [(True, "file is missing")]


def _nnunet(tmp_path, cases=("a", "b", "c", "d", "e", "f")):
    aff = np.diag([1.5, 1.5, 2.0, 1.0])
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for c in cases:
        for ch in range(2):
            _save(rng.random((8, 9, 10)).astype(np.float32), aff, tmp_path / "imagesTr" / f"{c}_{ch:04d}.nii.gz")
        lab = np.zeros((8, 9, 10), np.uint8)
        lab[2:5, 2:5, 2:5] = 1
        _save(lab, aff, tmp_path / "labelsTr" / f"{c}.nii.gz")
    (tmp_path / "dataset.json").write_text(
        json.dumps(
            {"channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0, "x": 1}, "file_ending": ".nii.gz"}
        )
    )
    return aff


def test_check_inf_voxels_channel_mismatches_nan_labels_empty_files(tmp_path, capsys):
    aff = _nnunet(tmp_path)
    img, lab = tmp_path / "imagesTr", tmp_path / "labelsTr"
    a = np.random.rand(8, 9, 10).astype(np.float32)
    a[1, 1, 1], a[2, 2, 2] = np.inf, -np.inf
    _save(a, aff, img / "a_0000.nii.gz")  # inf voxels
    _save(np.random.rand(8, 9, 11).astype(np.float32), aff, img / "b_0001.nii.gz")  # channel shape differs
    shifted = aff.copy()
    shifted[0, 3] += 3
    _save(np.random.rand(8, 9, 10).astype(np.float32), shifted, img / "c_0001.nii.gz")  # channel affine differs
    nan_lab = np.zeros((8, 9, 10), np.float32)
    nan_lab[0, 0, 0] = np.nan
    _save(nan_lab, aff, lab / "d.nii.gz")  # NaN label
    (img / "e_0000.nii.gz").write_bytes(b"")  # empty image file
    (lab / "f.nii.gz").write_bytes(b"")  # empty label file
    expected = [
        ("a_0000.nii.gz", "has 2 NaN/inf voxels"),
        ("b_0001.nii.gz", "channel shape [8, 9, 11] differs from [8, 9, 10]"),
        ("c_0001.nii.gz", "channel affine differs"),
        ("d.nii.gz", "label has NaN/inf voxels"),
        ("e_0000.nii.gz", "empty"),
        ("f.nii.gz", "empty"),
    ]
    errs = errors(check_dataset(load_dataset(tmp_path)))
    for name, fragment in expected:
        assert any(p.path.endswith(name) and fragment in p.message for p in errs), (name, [str(p) for p in errs])
    assert len(errs) == len(expected)
    assert check_main([str(tmp_path)]) == 1
    out = capsys.readouterr()
    lines = [x for x in (out.out + out.err).splitlines() if "error" in x.lower()]
    assert len([x for x in lines if any(n in x for n, _ in expected)]) == len(expected)


def test_check_duplicate_case_ids(synth_copy):
    meta = json.loads((synth_copy / "dataset.json").read_text())
    meta["training"].append(dict(meta["training"][0]))
    meta["numTraining"] = len(meta["training"])
    (synth_copy / "dataset.json").write_text(json.dumps(meta))
    errs = errors(check_dataset(load_dataset(synth_copy)))
    assert [p.message for p in errs] == ["case id 'synth_000' appears 2 times"]


def test_label_values_equal_numpys_unique_for_every_dtype_and_span():
    """The check reads a label's ids one comparison an id where the integer ids span fewer than FEW_IDS (64)
    (np.unique sorted every voxel: 12 ms of a whole-scan label), else np.unique: the same set either way."""
    from seg.data.check import FEW_IDS, label_values

    assert FEW_IDS == 64
    rng = np.random.default_rng(0)
    spans = [(np.uint8, 0, 3), (np.int16, -2, 5), (np.uint16, 0, 300), (np.int64, 7, 7), (np.uint8, 0, 63)]
    for dtype, lo, hi in spans:
        a = rng.integers(lo, hi + 1, (6, 5, 4)).astype(dtype)
        assert label_values(a) == set(np.unique(a).tolist())
    assert label_values(np.array([0.0, 2.0, 2.0])) == {0, 2}  # float labels (checked integral first)
    assert label_values(np.zeros((0,), np.uint8)) == set()
