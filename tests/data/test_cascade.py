"""A cascade's data: the first stage's out-of-fold probabilities as extra channels (seg.data.cascade)."""

from __future__ import annotations

import os
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from monai import transforms as T

from seg.data.cascade import attach_previous_stage
from seg.data.datalist import DatasetError, load_dataset
from seg.data.transforms import deterministic_transforms
from tests.inference.conftest import make_bundle


def fake_first_stage(root, run, labels=None, missing=(), shape=None, seed=0):
    """A finished k-fold run as a cascade reads it: model/model.yaml and each case's out-of-fold npz."""
    spec = load_dataset(root)
    make_bundle(run / "model", labels=labels or spec.labels, channels=spec.channel_names, folds=(0,))
    rng = np.random.default_rng(seed)
    for i, c in enumerate(spec.cases):
        if c.case_id in missing:
            continue
        s = shape or nib.load(c.images[0]).shape[:3]
        d = run / f"fold_{i % 2}" / "validation"
        d.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(d / f"{c.case_id}_prob.npz", prob=rng.random(s).astype(np.float16))
    return spec


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEG_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "previous_stage"


def test_each_case_reads_its_out_of_fold_probabilities_on_its_own_grid_made_once(synth_root, tmp_path, cache):
    run = tmp_path / "stage1"
    spec = attach_previous_stage(fake_first_stage(synth_root, run), run)
    assert spec.previous_channels == ["previous meningioma"] and spec.in_channels == 2
    for i, c in enumerate(spec.cases[:3]):
        img, prev = nib.load(c.images[0]), nib.load(c.previous)
        assert prev.shape == img.shape and np.array_equal(prev.affine, img.affine)
        saved = np.load(run / f"fold_{i % 2}" / "validation" / f"{c.case_id}_prob.npz")["prob"]
        assert np.array_equal(np.asarray(prev.dataobj), saved.astype(np.float32))
        assert c.as_dict()["prev"] == c.previous and os.path.dirname(c.previous) == str(cache)
    stamps = {c.previous: os.stat(c.previous).st_mtime_ns for c in spec.cases}
    again = attach_previous_stage(load_dataset(synth_root), run)  # made once: the same files, not rewritten
    assert {c.previous: os.stat(c.previous).st_mtime_ns for c in again.cases} == stamps
    # a new first-stage run (other probabilities) is a new file, never the stale one
    fake_first_stage(synth_root, run, seed=1)
    new = attach_previous_stage(load_dataset(synth_root), run)
    assert not {c.previous for c in new.cases} & set(stamps)


@pytest.mark.parametrize(
    "fault, names",
    [
        ("missing", "no out-of-fold probabilities for 1 case(s) (synth_002)"),
        ("labels", "a cascade's stages segment the same labels"),
        ("shape", "the first stage was run on other images"),
        ("unfinished", "not a finished seg-kfold run (no model/model.yaml)"),
    ],
)
def test_a_first_stage_that_does_not_fit_is_one_line_naming_its_file(synth_root, tmp_path, cache, fault, names):
    run = tmp_path / "stage1"
    fake_first_stage(
        synth_root,
        run,
        labels={0: "background", 1: "tumour", 2: "oedema"} if fault == "labels" else None,
        missing=("synth_002",) if fault == "missing" else (),
        shape=(16, 16, 16) if fault == "shape" else None,
    )
    if fault == "unfinished":
        shutil.rmtree(run / "model")
    with pytest.raises(DatasetError) as e:
        attach_previous_stage(load_dataset(synth_root), run)
    msg = str(e.value)
    assert names in msg and "\n" not in msg and str(run) in msg


def test_the_previous_stage_moves_with_the_image_and_is_not_normalised_nor_a_crop_source(synth_root, tmp_path, cache):
    run = tmp_path / "stage1"
    spec = attach_previous_stage(fake_first_stage(synth_root, run), run)
    case = spec.cases[0].as_dict()
    pre = {"spacing": [2.0, 2.0, 2.0], "normalize": {"mode": "zscore", "nonzero": True}, "crop_foreground": "nonzero"}
    out = T.Compose(deterministic_transforms(spec, with_label=True, **pre))(case)
    image = out["image"]
    assert image.shape[0] == 2 and "prev" not in out and out["label"].shape[1:] == image.shape[1:]
    # the image's own channel, alone, through the same steps: channel 0 is it, unchanged by the second
    alone = T.Compose(deterministic_transforms(load_dataset(synth_root), with_label=True, **pre))(
        {k: v for k, v in case.items() if k != "prev"}
    )
    assert torch.equal(image[:1].as_tensor(), alone["image"].as_tensor())
    # the probabilities resampled (bilinear) to 2 mm on the same crop, not z-scored: still in [0, 1]
    prev = T.Compose(
        [
            T.LoadImaged(keys="p", image_only=True),
            T.EnsureChannelFirstd(keys="p"),
            T.Orientationd(keys="p", axcodes="RAS", labels=None),
            T.Spacingd(keys="p", pixdim=(2.0, 2.0, 2.0), mode="bilinear", dtype=np.float32),
        ]
    )({"p": case["prev"]})["p"]
    box = [slice(None)] + [slice(int(a), int(b)) for a, b in zip(*_crop_box(alone["image"]))]
    assert torch.allclose(image[1:].as_tensor(), prev.as_tensor()[tuple(box)], atol=1e-6)
    assert 0 <= float(image[1].min()) and float(image[1].max()) <= 1


def _crop_box(image):
    """The crop box CropForeground recorded on the image (start, end)."""
    op = next(o for o in image.applied_operations if o["class"] == "CropForeground")
    cropped = np.asarray(op["extra_info"]["cropped"]).reshape(-1, 2)
    start = cropped[:, 0]
    return start, start + np.asarray(image.shape[1:])
