"""Resampling in slabs gives MONAI's whole-volume values; prediction's slab-wise softmax and argmax equal the
whole-volume ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai import transforms as T
from monai.networks.layers import AffineTransform

import seg.data.resample as resample
import seg.data.transforms  # noqa: F401  (installs the slab resampler)
from seg.data.resample import SlabAffineTransform, slabs
from seg.inference.predictor import Predictor, softmax_


def test_slab_voxels_is_pinned():
    assert resample.SLAB_VOXELS == 2**21


def _oblique(dtype=torch.float64) -> torch.Tensor:
    """Voxel coordinates that never fall on a half-voxel tie (where nearest may take either neighbour)."""
    r = np.sqrt([2.0, 3.0, 5.0, 7.0, 11.0]) / 10
    a = torch.tensor(
        [
            [0.6 + r[0], r[1] / 3, -r[2] / 4, 1.3 + r[3]],
            [-r[4] / 5, 0.5 + r[1], r[0] / 7, -2.2 + r[2]],
            [r[3] / 6, -r[2] / 9, 0.8 + r[4], 0.7 + r[0]],
            [0, 0, 0, 1],
        ],
        dtype=dtype,
    )
    return a


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_slabs_equal_the_whole_call(monkeypatch, mode, align_corners):
    src = torch.rand(1, 2, 23, 19, 17, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    size = (31, 27, 15)
    kw = dict(normalized=False, mode=mode, padding_mode="zeros", align_corners=align_corners, reverse_indexing=True)
    whole = AffineTransform(**kw)(src, _oblique(), size)
    monkeypatch.setattr(resample, "SLAB_VOXELS", 27 * 15 * 4)  # 4 rows a slab: 8 slabs, the last one short
    slabbed = SlabAffineTransform(**kw)(src, _oblique(), size)
    assert slabbed.dtype == torch.float32 and slabbed.shape == whole.shape
    torch.testing.assert_close(slabbed, whole.float(), rtol=0, atol=1e-6)


def test_spacing_forward_and_inverse_run_in_slabs(monkeypatch):
    """MONAI's Spacing (as seg's pipeline builds it) goes through the slab class, with its own values."""
    from monai.data import MetaTensor
    from monai.transforms.spatial import functional

    assert functional.AffineTransform is SlabAffineTransform
    calls = []
    orig = AffineTransform.forward

    def counting(self, src, theta, spatial_size=None):
        calls.append(tuple(spatial_size))
        return orig(self, src, theta, spatial_size)

    monkeypatch.setattr(AffineTransform, "forward", counting)
    affine = np.diag([1.0, 1.0, 2.5, 1.0])
    img = MetaTensor(torch.rand(1, 20, 18, 12, generator=torch.Generator().manual_seed(1)), affine=affine)
    sp = T.Spacing(pixdim=(0.7, 0.7, 1.1), mode="bilinear", dtype=np.float32)
    whole = sp(img.clone())
    assert len(calls) == 1  # one slab: MONAI's own call
    monkeypatch.setattr(resample, "SLAB_VOXELS", 26 * 28 * 3)
    calls.clear()
    slabbed = sp(img.clone())
    assert len(calls) > 3 and all(c[0] <= 3 for c in calls)
    torch.testing.assert_close(slabbed.as_tensor(), whole.as_tensor(), rtol=0, atol=1e-5)  # float32 coordinates
    back = sp.inverse(slabbed)
    assert tuple(back.shape[1:]) == (20, 18, 12)


def test_slab_helpers_cover_the_axis_once():
    assert slabs((10, 4, 4), voxels=48) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert slabs((3, 100, 100), voxels=1) == [(0, 1), (1, 2), (2, 3)]


def test_softmax_in_place_equals_torch_softmax(monkeypatch):
    logits = torch.randn(1, 3, 9, 5, 4, generator=torch.Generator().manual_seed(2)) * 5
    want = torch.softmax(logits, 1)
    monkeypatch.setattr(resample, "SLAB_VOXELS", 40)
    got = softmax_(logits)
    assert got.data_ptr() == logits.data_ptr()
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("threshold", [None, 0.3])
def test_labels_by_slab_equal_the_whole_argmax(monkeypatch, threshold):
    k = 2 if threshold else 4
    ids = [0, 2, 7, 300][:k]
    p = Predictor([torch.nn.Identity()], {i: str(i) for i in ids}, ["c"], {"mode": "patch"}, threshold=threshold)
    prob = torch.softmax(torch.randn(k, 11, 6, 5, generator=torch.Generator().manual_seed(3)), 0)
    monkeypatch.setattr(resample, "SLAB_VOXELS", 60)
    got = p.labels_from(prob)
    cls = (prob[1] >= threshold).long() if threshold else prob.argmax(0)
    want = np.asarray(ids)[cls.numpy()]
    assert got.dtype == (np.uint8 if threshold else np.uint16)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("nonzero", [True, False])
def test_zscore_by_slab_equals_monais_normalize_intensity(monkeypatch, nonzero):
    from monai.data import MetaTensor

    from seg.data.transforms import ZScored, normalize_transform

    assert isinstance(normalize_transform({"mode": "zscore", "nonzero": nonzero})[0], ZScored)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 30, 20, 10, generator=g) * 80 + 250
    x[:, :7] = 0  # background
    x[1] = 5.0  # a constant channel: std 0 divides by 1
    x[2] = 0.0  # an empty channel: left as it is
    monkeypatch.setattr(resample, "SLAB_VOXELS", 20 * 10 * 4)  # 8 slabs
    want = T.NormalizeIntensityd("image", nonzero=nonzero, channel_wise=True)({"image": MetaTensor(x.clone())})
    got = ZScored("image", nonzero=nonzero)({"image": MetaTensor(x.clone())})
    assert isinstance(got["image"], MetaTensor) and got["image"].dtype == torch.float32
    torch.testing.assert_close(got["image"].as_tensor(), want["image"].as_tensor(), rtol=0, atol=1e-6)
