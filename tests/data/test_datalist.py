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
