from __future__ import annotations

import json

import pytest

from seg.data.datalist import DatasetError, load_dataset
from seg.data.synthetic import write_dataset
from tests.conftest import shared


def test_msd_layout(synth_root):
    spec = load_dataset(synth_root)
    assert spec.layout == "msd"
    assert spec.in_channels == 1 and spec.out_channels == 2
    assert spec.foreground_names == ["meningioma"]
    assert len(spec.cases) == 8
    assert all(c.images[0].startswith(str(synth_root)) for c in spec.cases)


def test_nnunet_layout(tmp_path):
    root = write_dataset(tmp_path / "nn", n=3, seed=1, shape=(16, 16, 16), layout="nnunet")
    spec = load_dataset(root)
    assert spec.layout == "nnunet"
    assert [c.case_id for c in spec.cases] == ["synth_000", "synth_001", "synth_002"]
    assert spec.cases[0].images[0].endswith("imagesTr/synth_000_0000.nii.gz")
    assert spec.labels == {0: "background", 1: "meningioma"}


def test_unknown_layout_and_bad_json(tmp_path):
    (tmp_path / "dataset.json").write_text("{")
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(DatasetError, match="neither MSD"):
        load_dataset(tmp_path)


def test_region_labels_are_refused(tmp_path):
    (tmp_path / "labelsTr").mkdir()
    (tmp_path / "dataset.json").write_text(
        json.dumps(
            {"channel_names": {"0": "T1"}, "labels": {"background": 0, "whole": [1, 2]}, "file_ending": ".nii.gz"}
        )
    )
    with pytest.raises(DatasetError, match="region-based"):
        load_dataset(tmp_path)


def test_real_hippocampus_datalist():
    spec = load_dataset(shared("hippocampus"))
    assert len(spec.cases) == 200
    assert spec.foreground_names == ["Anterior", "Posterior"]


def test_seg_synth_target_ventricles_labels_the_large_structure(tmp_path):
    """The whole-scan proxy's label (docs/results.md): the enlarged ventricles, ~45 ml (an ellipsoid of
    1.6 x 10/22/12 mm semi-axes, inside the brain), not the lesions, which stay in the image unlabelled."""
    import json
    import math

    import nibabel as nib
    import numpy as np

    from seg.cli.synth import main
    from seg.data.synthetic import VENTRICLE_SCALE, make_case

    assert (
        main(
            ["-o", str(tmp_path / "v"), "-n", "1", "--seed", "4", "--shape", "48", "48", "48", "--target", "ventricles"]
        )
        == 0
    )
    meta = json.loads((tmp_path / "v" / "dataset.json").read_text())
    assert meta["labels"] == {"0": "background", "1": "ventricles"} and meta["seg_synthetic"]["target"] == "ventricles"
    lab = np.asanyarray(nib.load(tmp_path / "v" / "labelsTr" / "synth_000.nii.gz").dataobj)
    ml = lab.sum() * (200 / 48) ** 3 / 1000
    expected = 4 / 3 * math.pi * 10 * 22 * 12 * VENTRICLE_SCALE**3 / 1000
    assert VENTRICLE_SCALE == 1.6 and 0.7 * expected < ml < 1.2 * expected  # 44 ml, voxelised at 4.2 mm
    lesions = make_case(4, 0, (48, 48, 48))  # the same case with its lesions labelled: they are elsewhere
    assert not (lesions.label.astype(bool) & lab.astype(bool)).any()


def test_nnunet_images_without_the_channel_suffix_are_named_by_cause(tmp_path):
    """#41: images named CASE.nii.gz (no _0000) gave a "file is missing" line per case; one line names the cause."""
    from seg.data.datalist import DatasetError, load_dataset
    from seg.data.synthetic import write_dataset

    root = write_dataset(tmp_path / "raw", n=3, seed=0, shape=(16, 16, 16), layout="nnunet")
    assert load_dataset(root).declared_cases == 3
    for p in sorted((root / "imagesTr").iterdir()):
        p.rename(p.with_name(p.name.replace("_0000", "")))
    with pytest.raises(DatasetError) as e:
        load_dataset(root)
    line = str(e.value)
    assert len(line.splitlines()) == 1 and "3 image(s) named without the channel suffix" in line
    assert "-> " in line and "_0000.nii.gz)" in line


def test_num_training_that_disagrees_is_a_warning_of_the_check(tmp_path):
    import json

    from seg.data.check import check_dataset
    from seg.data.datalist import load_dataset
    from seg.data.synthetic import write_dataset

    root = write_dataset(tmp_path / "ds", n=3, seed=0, shape=(16, 16, 16))
    assert not [p for p in check_dataset(load_dataset(root)) if "numTraining" in p.message]
    meta = json.loads((root / "dataset.json").read_text())
    meta["numTraining"] = 40
    (root / "dataset.json").write_text(json.dumps(meta))
    found = [p for p in check_dataset(load_dataset(root)) if "numTraining" in p.message]
    assert len(found) == 1 and found[0].level == "warning" and "numTraining is 40, 3 cases found" in found[0].message
