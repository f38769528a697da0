"""Postprocessing: decided per label on out-of-fold predictions when it raises their mean Dice, recorded in the
bundle, applied by seg-predict (which says so), and off when it does not help."""

from __future__ import annotations

import numpy as np
import pytest

from seg.data.postprocess import Postprocessing
from seg.eval.postprocess import MIN_GAIN, decide


def block(shape, lo, hi, value=1):
    m = np.zeros(shape, np.int64)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = value
    return m


SHAPE = (30, 30, 30)


def test_largest_component_is_kept_where_stray_blobs_cost_dice():
    ref = block(SHAPE, (5, 5, 5), (15, 15, 15))
    pred = ref | block(SHAPE, (22, 22, 22), (25, 25, 25))  # the lesion, and a stray 27-voxel blob
    pp, report = decide([(pred, ref, (1, 1, 1))] * 3, {0: "background", 1: "lesion"})
    assert pp.rules == {1: {"op": "largest"}}
    assert report["1"]["dice_with"] == pytest.approx(1.0) and report["1"]["dice_without"] < 0.99
    out, removed = pp.apply(pred, (1, 1, 1))
    assert np.array_equal(out, ref) and removed == {1: 1}


def test_small_components_are_removed_where_there_are_several_lesions():
    """Two real lesions per case (largest-only would lose one), specks beside them: removing components under
    a volume wins, with the volume taken from the smallest real lesion."""
    ref = block(SHAPE, (2, 2, 2), (10, 10, 10)) | block(SHAPE, (18, 18, 18), (24, 24, 24))
    pred = ref | block(SHAPE, (27, 2, 2), (29, 4, 4))  # an 8-voxel speck
    pp, report = decide([(pred, ref, (1, 1, 1))] * 3, {0: "background", 1: "lesion"})
    assert pp.rules[1]["op"] == "min_ml" and report["1"]["dice_with"] == pytest.approx(1.0)
    assert report["1"]["candidates"]["largest component"] < report["1"]["dice_without"]  # it would drop a lesion


def test_nothing_is_adopted_when_nothing_helps():
    ref = block(SHAPE, (5, 5, 5), (15, 15, 15))
    pp, report = decide([(ref.copy(), ref, (1, 1, 1))], {0: "background", 1: "lesion"})
    assert not pp and report["1"]["choice"] == "none"
    assert MIN_GAIN == 1e-4


def test_min_gain_is_the_line_between_adopted_and_not():
    """MIN_GAIN (1e-4) at its boundary: a stray voxel beside a 1000-voxel lesion costs 5.0e-4 Dice (adopted),
    beside an 8000-voxel one 6.2e-5 (not)."""
    stray = block(SHAPE, (27, 27, 27), (28, 28, 28))
    for edge, adopted in ((10, True), (20, False)):
        ref = block(SHAPE, (2, 2, 2), (2 + edge, 2 + edge, 2 + edge))
        pp, report = decide([(ref | stray, ref, (1, 1, 1))], {0: "background", 1: "lesion"})
        gain = report["1"]["candidates"]["largest component"] - report["1"]["dice_without"]
        assert (gain > 1e-3) is False and (gain > 1e-4) is adopted
        assert bool(pp.rules) is adopted, (edge, gain)


def test_components_are_26_connected_a_corner_joins_them():
    """Postprocessing's components are 26-connected (docs/metrics.md, MONAI's default): a voxel that touches the
    lesion only at a corner is part of it and stays; one a voxel apart is a component of its own and goes."""
    lesion = block(SHAPE, (5, 5, 5), (15, 15, 15))
    corner = lesion | block(SHAPE, (15, 15, 15), (16, 16, 16))
    out, removed = Postprocessing({1: {"op": "largest"}}).apply(corner, (1, 1, 1))
    assert np.array_equal(out, corner) and removed == {}
    apart = lesion | block(SHAPE, (16, 16, 16), (17, 17, 17))
    out, removed = Postprocessing({1: {"op": "largest"}}).apply(apart, (1, 1, 1))
    assert np.array_equal(out, lesion) and removed == {1: 1}


def test_rules_round_trip_through_the_bundle_and_refuse_nonsense(tmp_path):
    from seg.errors import UserError
    from seg.inference.bundle import load_bundle, write_bundle_meta
    from tests.inference.conftest import make_bundle

    root = make_bundle(tmp_path / "b", folds=(0,))
    b = load_bundle(root)
    b.meta.postprocessing = Postprocessing({1: {"op": "min_ml", "ml": 0.5}})
    write_bundle_meta(root, b.meta)
    assert load_bundle(root).meta.postprocessing.rules == {1: {"op": "min_ml", "ml": 0.5}}
    with pytest.raises(UserError, match="postprocessing\\[1\\].op='biggest' is not one of"):
        Postprocessing({1: {"op": "biggest"}})


def test_seg_predict_applies_the_bundles_postprocessing_and_says_so(tmp_path, synth_root, capsys, caplog, monkeypatch):
    import logging
    import shutil

    import nibabel as nib

    from seg.cli.predict import main
    from seg.inference.bundle import load_bundle, write_bundle_meta
    from seg.inference.predictor import Predictor
    from tests.inference.conftest import make_bundle

    def two_blobs(self, prob):  # the net's label map: a large and a small lesion, on the input's grid
        labels = np.zeros(prob.shape[1:], np.uint8)
        labels[2:10, 2:10, 2:10] = 1
        labels[-4:-2, -4:-2, -4:-2] = 1
        return labels

    monkeypatch.setattr(Predictor, "labels_from", two_blobs)

    root = make_bundle(tmp_path / "b", folds=(0,))
    b = load_bundle(root)
    b.meta.postprocessing = Postprocessing({1: {"op": "largest"}})
    write_bundle_meta(root, b.meta)
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(synth_root / "imagesTr" / "synth_000.nii.gz", inp / "a.nii.gz")
    args = ["-i", str(inp), "-m", str(root), "-q"]
    with caplog.at_level(logging.INFO):
        assert main([*args, "-o", str(tmp_path / "on")]) == 0
    out = capsys.readouterr().out
    assert "postprocessing: lesion: largest component" in out
    assert any("postprocessed: lesion" in r.getMessage() for r in caplog.records)
    assert main([*args, "-o", str(tmp_path / "off"), "--no-postprocessing"]) == 0
    assert "postprocessing: off (--no-postprocessing)" in capsys.readouterr().out
    on = np.asanyarray(nib.load(tmp_path / "on" / "a.nii.gz").dataobj)
    off = np.asanyarray(nib.load(tmp_path / "off" / "a.nii.gz").dataobj)
    from seg.data.components import count_components

    assert count_components(on == 1) == 1 and count_components(off == 1) == 2
    assert (on == 1).sum() == 8**3  # the large one kept


@pytest.mark.parametrize("connectivity", [26, 6])
def test_counted_components_inside_the_bounding_box_equal_scipys_over_the_whole_mask(connectivity):
    """count_components labels the mask's bounding box only: the count must equal scipy's over the whole mask
    (random masks, sparse to dense, components touching the box's faces included)."""
    from scipy import ndimage

    from seg.data.components import count_components, structure

    rng = np.random.default_rng(0)
    for i in range(200):
        m = rng.random((9, 8, 7)) < rng.random() * 0.3
        m[: i % 3] = False  # an empty margin on some: the box smaller than the mask
        assert count_components(m, connectivity) == ndimage.label(m, structure(3, connectivity))[1]
    assert count_components(np.zeros((4, 4, 4), bool)) == 0


def test_the_centroid_inside_the_bounding_box_equals_the_mean_index_over_the_whole_mask():
    from seg.data.components import centroid

    rng = np.random.default_rng(1)
    for i in range(100):
        m = rng.random((9, 8, 7)) < rng.random() * 0.2
        m[: i % 4], m[..., : i % 3] = False, False
        if m.any():
            assert np.allclose(centroid(m), np.argwhere(m).mean(0))
    assert centroid(np.zeros((4, 4, 4), bool)) is None
