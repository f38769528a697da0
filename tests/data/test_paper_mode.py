"""The paper's whole-volume pre-processing and its exact inverse."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai import transforms as T

from seg.data.datalist import DatasetSpec, load_dataset
from seg.data.inverse import invert_to_original
from seg.data.transforms import HeadMask, deterministic_transforms
from tests.conftest import shared

SPEC = DatasetSpec(root=".", layout="msd", channel_names=["T1"], labels={0: "background", 1: "lesion"})


def _paper(resize, with_label=False, spacing=(1.0, 1.0, 1.0)):
    return T.Compose(
        deterministic_transforms(
            SPEC,
            mode="resize",
            spacing=spacing,
            normalize={"mode": "minmax"},
            crop_foreground="head",
            resize_shape=resize,
            with_label=with_label,
        )
    )


def test_head_mask_ignores_specks_and_fills_holes():
    a = np.zeros((1, 30, 30, 30), np.float32)
    a[0, 5:25, 5:25, 5:25] = 1.0
    a[0, 12:18, 12:18, 12:18] = 0.0  # a dark hole inside the head (ventricle-like)
    a[0, 0, 0, 0] = 1.0  # a bright speck outside
    m = HeadMask(0.2)(torch.from_numpy(a))
    assert m.shape == a.shape and m[0, 15, 15, 15] and not m[0, 0, 0, 0]
    assert m.sum() == 20**3


@pytest.mark.parametrize(
    "name", ["brainchop_t1_crop_1mm_256.nii.gz", "IXI012-HH-1211_T1_2mm.nii.gz", "IXI015-HH-1258_T1_2mm.nii.gz"]
)
def test_forward_then_inverse_restores_grid_real_t1(name):
    path = shared("brain_t1") / name
    tr = _paper([64, 64, 72])
    img = tr({"image": str(path)})["image"]
    assert tuple(img.shape) == (1, 64, 64, 72)
    back = invert_to_original(img, img, tr)
    nii = nib.load(str(path))
    assert tuple(back.shape[1:]) == nii.shape
    np.testing.assert_allclose(back.affine.numpy(), nii.affine, atol=1e-5)
    a = nii.get_fdata()
    head = a > a.min() + 0.2 * (a.max() - a.min())
    assert np.corrcoef(a[head], back[0].numpy()[head])[0, 1] > 0.7  # same anatomy, at 64x64x72 resolution


def test_inverse_of_label_recovers_it(synth_root):
    spec = load_dataset(synth_root)
    case = spec.cases[1].as_dict()
    tr = T.Compose(
        deterministic_transforms(
            spec,
            mode="resize",
            spacing=[3.0, 3.0, 3.0],
            normalize={"mode": "minmax"},
            crop_foreground="head",
            resize_shape=[48, 48, 48],
            with_label=False,
        )
    )
    lab_tr = T.Compose(
        deterministic_transforms(
            spec,
            mode="resize",
            spacing=[3.0, 3.0, 3.0],
            normalize={"mode": "minmax"},
            crop_foreground="head",
            resize_shape=[48, 48, 48],
            with_label=True,
        )
    )
    img = tr({"image": case["image"]})["image"]
    lab = lab_tr(case)["label"]  # the label through the same pipeline (same crop box: it follows the image)
    back = invert_to_original(lab.float(), img, tr)  # as inference does: probabilities, then threshold
    orig = nib.load(case["label"]).get_fdata()
    assert tuple(back.shape[1:]) == orig.shape
    b = back[0].numpy() > 0.5
    dice = 2 * (b & (orig > 0)).sum() / (b.sum() + (orig > 0).sum())
    assert dice > 0.8
    with pytest.raises(ValueError, match="differs"):
        invert_to_original(torch.zeros(1, 8, 8, 8), img, tr)
