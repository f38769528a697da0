"""The predictor returns probabilities and masks on the input's exact grid, whatever its orientation."""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pytest
import torch

from seg.inference.predictor import Predictor, save_mask
from seg.nn import create_net
from seg.nn.inferer import InfererSpec
from tests.conftest import shared

PATCH = {"mode": "patch", "spacing": None, "orientation": "RAS", "normalize": {"mode": "zscore", "nonzero": True}}
PAPER = {
    "mode": "resize",
    "spacing": [2.0, 2.0, 2.0],
    "orientation": "RAS",
    "normalize": {"mode": "minmax"},
    "crop_foreground": "head",
    "resize_shape": [32, 32, 36],
}


def _net(seed=0, out=2):
    torch.manual_seed(seed)
    return create_net("unet", spatial_dims=3, in_channels=1, out_channels=out, filters=[4, 8, 8]).eval()


@pytest.mark.parametrize("pre", [PATCH, PAPER], ids=["patch", "paper-resize"])
@pytest.mark.parametrize(
    "name", [pytest.param("brainchop_t1_crop_1mm_256.nii.gz", marks=pytest.mark.slow), "IXI012-HH-1211_T1_2mm.nii.gz"]
)
def test_output_on_input_grid_real_t1(tmp_path, pre, name):
    path = shared("brain_t1") / name
    labels = {0: "background", 3: "tumour"}  # a non-consecutive id comes back as itself
    pred = Predictor([_net()], labels, ["T1"], pre, InfererSpec(roi_size=(48, 48, 48), overlap=0.25))
    out = pred.predict(str(path))
    src = nib.load(str(path))
    assert tuple(out.probabilities.shape) == (2, *src.shape)
    assert set(np.unique(out.labels)) <= {0, 3}
    save_mask(out.labels, src, tmp_path / "mask.nii.gz")
    m = nib.load(str(tmp_path / "mask.nii.gz"))
    assert m.shape == src.shape and m.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(m.affine, src.affine)
    assert nib.aff2axcodes(m.affine) == nib.aff2axcodes(src.affine)
    assert int(m.header["qform_code"]) == int(src.header["qform_code"])
    assert int(m.header["sform_code"]) == int(src.header["sform_code"])
    np.testing.assert_array_equal(np.asanyarray(m.dataobj), out.labels)


def test_ensemble_is_mean_softmax_and_tta_is_symmetric(synth_root):
    img = str(sorted((synth_root / "imagesTr").iterdir())[0])
    a, b = _net(1), _net(2)
    pa = Predictor([a], {0: "bg", 1: "x"}, ["T1"], PATCH, InfererSpec(roi_size=(32, 32, 32)))
    pb = Predictor([b], {0: "bg", 1: "x"}, ["T1"], PATCH, InfererSpec(roi_size=(32, 32, 32)))
    pab = Predictor([a, b], {0: "bg", 1: "x"}, ["T1"], PATCH, InfererSpec(roi_size=(32, 32, 32)))
    img_t = pa.transform({"image": img})["image"]
    torch.testing.assert_close(pab.probabilities(img_t), (pa.probabilities(img_t) + pb.probabilities(img_t)) / 2)
    tta = Predictor([a], {0: "bg", 1: "x"}, ["T1"], PATCH, InfererSpec(roi_size=(32, 32, 32)), tta=True)
    p = tta.probabilities(img_t)
    q = tta.probabilities(torch.flip(img_t, [1]))
    torch.testing.assert_close(torch.flip(q, [1]), p, atol=1e-5, rtol=1e-4)  # mirroring-equivariant by construction
    torch.testing.assert_close(p.sum(0), torch.ones_like(p[0]))
    # TTA is the mean over all 8 mirrorings of the plain prediction, each mirrored back
    subsets = [c for r in range(4) for c in itertools.combinations((1, 2, 3), r)]
    assert len(subsets) == 8
    manual = sum(
        torch.flip(pa.probabilities(torch.flip(img_t, c)), c) if c else pa.probabilities(img_t) for c in subsets
    )
    torch.testing.assert_close(p, manual / 8, atol=1e-5, rtol=1e-4)


def test_threshold_for_binary_models():
    prob = torch.tensor([[[[0.7, 0.45, 0.2]]], [[[0.3, 0.55, 0.8]]]])  # [K=2, 1, 1, 3]
    p = Predictor([_net()], {0: "bg", 1: "x"}, ["T1"], PATCH, threshold=0.6)
    assert p.labels_from(prob).tolist() == [[[0, 0, 1]]]
    p.threshold = None
    assert p.labels_from(prob).tolist() == [[[0, 1, 1]]]


class _IntensitySign(torch.nn.Module):
    """A fixed network: logits (-x, +x) of the normalised intensity x, so the mask is 'x > 0' voxel by voxel."""

    def forward(self, x):
        return torch.cat([-x, x], 1) * 10


@pytest.mark.parametrize(
    "sub, name",
    [
        ("brain_t1", "brainchop_t1_crop_1mm_256.nii.gz"),  # LIA, uint8
        ("multilabel", "t2.nii.gz"),  # PSR
        ("brain_t1", "IXI012-HH-1211_T1_2mm.nii.gz"),  # float64
    ],
)
def test_mask_content_on_the_input_grid(sub, name):
    # not only the header: the mask's voxels are where the input's own voxels say (z-scored over non-zero
    # voxels: foreground where the raw intensity exceeds the non-zero mean), in the input's orientation
    path = shared(sub) / name
    raw = np.asanyarray(nib.load(str(path)).dataobj).astype(np.float64)
    raw = raw[..., 0] if raw.ndim == 4 else raw
    p = Predictor([_IntensitySign()], {0: "bg", 1: "fg"}, ["T1"], PATCH, InfererSpec(roi_size=(64, 64, 64)))
    mask = p.predict(str(path)).labels
    mean = raw[raw != 0].mean()
    expected = (raw > mean).astype(np.uint8)
    clear = np.abs(raw - mean) > 1e-3 * max(1.0, abs(mean))  # voxels at the mean itself are ties
    assert mask.shape == raw.shape
    assert np.array_equal(mask[clear], expected[clear])
    assert 0.05 < expected.mean() < 0.95  # both classes present: a flipped or shifted mask would differ


def test_gpu_out_of_memory_falls_back_to_stitching_on_the_cpu(monkeypatch, caplog):
    # no GPU here: a stand-in volume on "cuda" and a MONAI inferer that runs out of memory once
    import logging
    from types import SimpleNamespace

    import seg.nn.inferer as inf

    calls = []

    def fake_swi(x, **kw):
        calls.append(kw)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return SimpleNamespace(to=lambda device: ("moved to", device))

    monkeypatch.setattr(inf, "sliding_window_inference", fake_swi)
    x = SimpleNamespace(device=torch.device("cuda", 0), shape=(1, 1, 64, 64, 64))
    with caplog.at_level(logging.WARNING):
        spec = InfererSpec(roi_size=(32, 32, 32))
        out = inf.sliding_window(lambda t: t, x, spec)
    assert len(calls) == 2 and "device" not in calls[0]
    assert calls[1]["device"] == "cpu" and calls[1]["sw_device"] == x.device  # windows on the GPU, sum on the CPU
    assert out == ("moved to", x.device)
    assert "stitching the sliding windows on the CPU" in caplog.text
    # on the CPU an out-of-memory is not retried
    calls.clear()
    with pytest.raises(torch.cuda.OutOfMemoryError):
        inf.sliding_window(lambda t: t, SimpleNamespace(device=torch.device("cpu"), shape=x.shape), spec)


def test_tta_mirrors_only_the_axes_training_mirrored(synth_root):
    """A net trained without mirroring an axis reads a mirrored structure as another (the hippocampus's
    anterior and posterior parts): TTA averages the mirrorings of the recorded axes only, as nnU-Net's."""
    img = str(sorted((synth_root / "imagesTr").iterdir())[0])
    a = _net(1)
    plain = Predictor([a], {0: "bg", 1: "x"}, ["T1"], PATCH, InfererSpec(roi_size=(32, 32, 32)))
    x = plain.transform({"image": img})["image"]
    p = plain.probabilities(x)
    one = Predictor(
        [a], {0: "bg", 1: "x"}, ["T1"], PATCH, InfererSpec(roi_size=(32, 32, 32)), tta=True, mirror_axes=[1]
    )
    expected = (p + torch.flip(plain.probabilities(torch.flip(x, [2])), [2])) / 2  # axis 1 is tensor dim 2
    torch.testing.assert_close(one.probabilities(x), expected, atol=1e-5, rtol=1e-4)
    none = Predictor(
        [a], {0: "bg", 1: "x"}, ["T1"], PATCH, InfererSpec(roi_size=(32, 32, 32)), tta=True, mirror_axes=[]
    )
    torch.testing.assert_close(none.probabilities(x), p)
