from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai import transforms as T

from seg.data.datalist import load_dataset
from seg.data.datamodule import SegDataModule
from seg.data.synthetic import make_case
from seg.data.transforms import deterministic_transforms


def test_synthetic_is_deterministic_and_realistic():
    a, b = make_case(5, 2, (32, 32, 32)), make_case(5, 2, (32, 32, 32))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert not np.array_equal(make_case(6, 2, (32, 32, 32)).image, a.image)
    assert not np.allclose(a.affine[:3, :3], np.diag(np.diag(a.affine[:3, :3])))  # rotated, not axis-aligned
    cases = [make_case(0, i, (48, 48, 48)) for i in range(30)]
    counts = [len(c.lesion_ml) for c in cases]
    assert 0 in counts and 2 in counts and 1 in counts
    vols = [v for c in cases for v in c.lesion_ml]
    assert min(vols) < 1.0 < 10.0 < max(vols)
    for c in cases:
        if c.label.any():  # enhancing lesion brighter than the rest of the head
            assert c.image[c.label > 0].mean() > 1.2 * c.image[(c.label == 0) & (c.image > 100)].mean()


@pytest.mark.parametrize(
    "mode, kwargs, expected",
    [
        ("patch", {"patch_size": [16, 20, 24]}, (2, 1, 16, 20, 24)),
        ("resize", {"resize_shape": [24, 16, 20]}, (2, 1, 24, 16, 20)),
    ],
    ids=["patch", "resize"],
)
def test_datamodule_batches(synth_root, tmp_path, mode, kwargs, expected):
    dm = SegDataModule(
        str(synth_root),
        mode=mode,
        num_workers=0,
        num_samples=1,
        batch_size=2,
        num_folds=4,
        cache="none",
        splits_file=str(tmp_path / "splits.json"),
        augment={"flip_prob": 0.5, "affine_prob": 0.5, "noise_prob": 0.5},
        **kwargs,
    )
    dm.setup("fit")
    assert len(dm.val_cases) == 2 and len(dm.train_cases) == 6
    assert not set(dm.val_cases) & set(dm.train_cases)
    batch = next(iter(dm.train_dataloader()))
    assert tuple(batch["image"].shape) == expected
    assert set(torch.unique(batch["label"]).tolist()) <= {0.0, 1.0}
    val = next(iter(dm.val_dataloader()))
    if mode == "resize":
        assert tuple(val["image"].shape[2:]) == tuple(kwargs["resize_shape"])
    else:
        assert tuple(val["image"].shape[2:]) == (32, 32, 32)
    assert json.loads((tmp_path / "splits.json").read_text())[0]["val"] == dm.val_cases


def test_persistent_is_the_content_keyed_disk_cache(synth_root, tmp_path):
    """data.cache=persistent (once MONAI's path-keyed cache, R3 of round three) reads seg's disk cache."""
    from seg.data.diskcache import DiskCacheDataset

    dm = SegDataModule(
        str(synth_root),
        patch_size=[16, 16, 16],
        num_workers=0,
        cache="persistent",
        cache_dir=str(tmp_path / "cache"),
        num_folds=4,
        splits_file=str(tmp_path / "s.json"),
    )
    dm.setup("fit")
    next(iter(dm.train_dataloader()))
    assert isinstance(dm.train_ds, DiskCacheDataset) and isinstance(dm.val_ds, DiskCacheDataset)
    assert len([p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]) == 8


def test_orientation_zscore_and_label_remap(tmp_path):
    """An LPS-oriented case with non-consecutive labels {0, 2, 7} comes out RAS with classes {0, 1, 2}."""
    root = tmp_path / "ds"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    aff = np.diag([-2.0, -2.0, 3.0, 1.0])
    img = np.random.default_rng(0).normal(100, 20, (10, 12, 8)).astype(np.float32)
    img[0] = 0  # a zero slab: excluded from the z-score statistics
    lab = np.zeros((10, 12, 8), np.uint8)
    lab[1, 2, 3], lab[5, 5, 5] = 2, 7
    nib.save(nib.Nifti1Image(img, aff), str(root / "imagesTr" / "a.nii.gz"))
    nib.save(nib.Nifti1Image(lab, aff), str(root / "labelsTr" / "a.nii.gz"))
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "modality": {"0": "CT"},
                "labels": {"0": "bg", "2": "liver", "7": "spleen"},
                "training": [{"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"}],
            }
        )
    )
    spec = load_dataset(root)
    out = T.Compose(deterministic_transforms(spec, "patch"))(spec.cases[0].as_dict())
    assert np.allclose(np.sign(np.diag(out["image"].affine.numpy())[:3]), [1, 1, 1])
    assert sorted(torch.unique(out["label"]).tolist()) == [0, 1, 2]
    # LPS -> RAS flips x and y: voxel (1, 2, 3) of label 2 moves to (8, 9, 3) as class 1
    assert out["label"][0, 8, 9, 3] == 1 and out["label"][0, 4, 6, 5] == 2
    nz = out["image"][0][out["image"][0] != 0]
    assert abs(float(nz.mean())) < 1e-4 and abs(float(nz.std()) - 1) < 1e-2


def test_augment_defaults_are_the_documented_ones():
    """docs/configuration.md's table is the Augment dataclass's defaults (one home, documented)."""
    import dataclasses
    import re

    from seg.data.transforms import Augment
    from tests.conftest import REPO

    text = (REPO / "docs" / "configuration.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| ([^|]+?) \|", text, flags=re.M))
    for f in dataclasses.fields(Augment):
        shown = rows[f.name].strip()
        assert (None if shown == "null" else float(shown)) == f.default, f.name
    assert Augment.from_mapping({"flip_prob": None, "noise_std": 0.2}) == Augment(noise_std=0.2)
    from seg.data.datamodule import DEFAULT_NUM_SAMPLES, DEFAULT_NUM_WORKERS

    assert (DEFAULT_NUM_SAMPLES, DEFAULT_NUM_WORKERS) == (2, 2)


def test_msd_4d_images_with_channels_last_are_read_as_their_channels(tmp_path):
    """README: an MSD image may be "4D with channels last": a two-modality case is read as two channels, each in
    its own place (channel 0 a ramp along x, channel 1 along y, each z-scored alone), and seg-check-data passes
    it; a file with a third channel is named (#46 item 7)."""
    from seg.data.check import check_dataset, errors

    root = tmp_path / "Task"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    x, y, _ = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in (10, 12, 8)], indexing="ij")
    lab = np.zeros((10, 12, 8), np.uint8)
    lab[3:6, 3:6, 3:6] = 1
    for name, img in (("a", np.stack([x + 1, 100 * y + 50], -1)), ("b", np.stack([x + 1, y + 1, x + y], -1))):
        nib.save(nib.Nifti1Image(img, np.eye(4)), str(root / "imagesTr" / f"{name}.nii.gz"))
        nib.save(nib.Nifti1Image(lab, np.eye(4)), str(root / "labelsTr" / f"{name}.nii.gz"))
    entries = [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in "ab"]
    meta = {"modality": {"0": "T1", "1": "FLAIR"}, "labels": {"0": "bg", "1": "lesion"}, "training": entries}
    (root / "dataset.json").write_text(json.dumps(meta))
    spec = load_dataset(root)
    assert spec.channels_in_one_file and spec.channel_names == ["T1", "FLAIR"]
    problems = errors(check_dataset(spec))
    assert [p.path for p in problems] == [str(root / "imagesTr" / "b.nii.gz")] and "3 channels" in problems[0].message
    out = T.Compose(deterministic_transforms(spec, "patch"))(spec.cases[0].as_dict())
    img = out["image"]
    assert tuple(img.shape) == (2, 10, 12, 8)
    for c, ramp in ((0, x), (1, y)):
        z = (ramp - ramp.mean()) / ramp.std()
        assert np.allclose(img[c].numpy(), z, atol=1e-4), c
