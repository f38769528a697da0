from __future__ import annotations

import math

import numpy as np
import pytest

from seg.eval.detection import bin_label, case_detection, summarize, summarize_by_volume, threshold_scan
from seg.eval.metrics import binary_metrics, case_metrics


def cube(shape, lo, hi):
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


def sphere(shape, centre, radius, spacing=(1, 1, 1)):
    g = np.meshgrid(*[np.arange(s) * sp for s, sp in zip(shape, spacing)], indexing="ij")
    return sum((x - c * sp) ** 2 for x, c, sp in zip(g, centre, spacing)) <= radius**2


def test_cubes_known_overlap_and_volume():
    ref = cube((30, 30, 30), (5, 5, 5), (15, 15, 15))
    pred = cube((30, 30, 30), (7, 5, 5), (17, 15, 15))  # shifted by 2 along x: 8x10x10 overlap
    m = binary_metrics(pred, ref, spacing=(1.0, 1.0, 2.0), surface=True, tolerance_mm=1.0)
    assert m["Dice"] == pytest.approx(0.8) and m["IoU"] == pytest.approx(800 / 1200)
    assert m["ref_ml"] == pytest.approx(2.0) and m["pred_ml"] == pytest.approx(2.0)  # 1000 voxels of 2 mm^3
    assert m["HD95"] == pytest.approx(2.0, abs=0.01)  # the x faces are 2 mm apart
    assert 0 < m["SurfaceDice"] < 1
    same = binary_metrics(ref, ref, (1, 1, 2))
    assert same["Dice"] == 1 and same["HD95"] == 0 and same["ASD"] == 0 and same["SurfaceDice"] == 1


def test_empty_conventions():
    z = np.zeros((8, 8, 8), bool)
    c = cube((8, 8, 8), (2, 2, 2), (4, 4, 4))
    both = binary_metrics(z, z, (1, 1, 1))
    assert math.isnan(both["Dice"]) and math.isnan(both["HD95"])
    missed = binary_metrics(z, c, (1, 1, 2))
    diagonal = math.sqrt(8**2 + 8**2 + 16**2)  # the image's diagonal in mm: the worst-case distance
    assert missed["Dice"] == 0 and missed["SurfaceDice"] == 0
    assert missed["HD95"] == pytest.approx(diagonal) and missed["ASD"] == pytest.approx(diagonal)
    false_alarm = binary_metrics(c, z, (1, 1, 1))
    assert false_alarm["Dice"] == 0 and false_alarm["pred_ml"] == pytest.approx(0.008)
    assert false_alarm["HD95"] == pytest.approx(math.sqrt(3 * 64))


def test_means_count_missed_structures_at_the_worst_distance():
    from seg.eval.evaluate import aggregate

    c = cube((8, 8, 8), (2, 2, 2), (4, 4, 4))
    shifted = cube((8, 8, 8), (3, 2, 2), (4, 4, 4))
    z = np.zeros((8, 8, 8), bool)
    # exact, half of it, missed twice, spurious once, both empty
    cases = [(c, c), (shifted, c), (z, c), (z, shifted), (c, z), (z, z)]
    per_case = [{"metrics": {"1": binary_metrics(p, r, (1, 1, 1))}, "_detection": {"1": {}}} for p, r in cases]
    from unittest import mock

    with (
        mock.patch("seg.eval.evaluate.summarize", return_value={}),
        mock.patch("seg.eval.evaluate.summarize_by_volume", return_value={}),
        mock.patch("seg.eval.evaluate.data_bins", return_value=[3.0]),
    ):
        s = aggregate(per_case, {0: "background", 1: "lesion"})
    m = s["mean"]["1"]
    diag = math.sqrt(3 * 64)
    assert m["n_missed"] == 2 and m["n_spurious"] == 1
    assert s["foreground_mean"]["n_missed"] == 2
    # five defined cases (both-empty is undefined): 0, 1, and the diagonal three times
    assert m["HD95"] == pytest.approx((0 + 1 + 3 * diag) / 5)
    assert m["Dice"] == pytest.approx((1 + 2 * 4 / 12 + 0 + 0 + 0) / 5)  # the half cube: 2 x 4 / (4 + 8)


def test_case_metrics_per_label_keys():
    ref = np.zeros((10, 10, 10), np.uint8)
    ref[1:4, 1:4, 1:4], ref[6:9, 6:9, 6:9] = 1, 2
    pred = ref.copy()
    pred[6:9, 6:9, 6:9] = 0
    m = case_metrics(pred, ref, (1, 1, 1), {0: "bg", 1: "a", 2: "b"}, surface=False)
    assert set(m) == {"1", "2"} and m["1"]["Dice"] == 1 and m["2"]["Dice"] == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_surface_distances_match_medpy(seed):
    medpy = pytest.importorskip("medpy.metric.binary")
    rng = np.random.default_rng(seed)
    spacing = (1.0, 1.5, 2.5)
    shape = (40, 36, 24)
    ref = sphere(shape, (20, 18, 12), 9, spacing) & (rng.random(shape) > 0.05)
    pred = sphere(shape, (22, 17, 12), 8, spacing) | sphere(shape, (10, 10, 6), 3, spacing)
    m = binary_metrics(pred, ref, spacing)
    # medpy's directed surface distances, combined the way seg defines the metrics (as MONAI and
    # DeepMind's surface-distance do): HD95 = max of the two directed 95th percentiles; ASD = mean of
    # all distances of both directions. (medpy's own hd95/assd pool or average differently.)
    d_pr = getattr(medpy, "__surface_distances")(pred, ref, spacing, 1)
    d_rp = getattr(medpy, "__surface_distances")(ref, pred, spacing, 1)
    hd95 = max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))
    asd = np.concatenate([d_pr, d_rp]).mean()
    assert m["HD95"] == pytest.approx(hd95, rel=0.1, abs=0.5)
    assert m["ASD"] == pytest.approx(asd, rel=0.1, abs=0.3)
    assert m["Dice"] == pytest.approx(medpy.dc(pred, ref), abs=1e-9)


def test_detection_two_lesions_one_missed_and_false_positive():
    shape = (40, 40, 40)
    big = sphere(shape, (12, 12, 12), 6)  # ~900 voxels
    small = sphere(shape, (30, 30, 30), 3)  # ~120 voxels
    speck = cube(shape, (35, 2, 2), (38, 5, 5))  # 27 voxels: under the 50-voxel minimum
    c1 = case_detection("a", pred=big | speck, ref=big | small, spacing=(1, 1, 1))
    assert c1.ref_objects == 2 and c1.pred_objects == 1 and c1.matched == 1 and c1.detected
    c2 = case_detection("b", pred=cube(shape, (1, 1, 1), (6, 6, 6)), ref=np.zeros(shape, bool), spacing=(1, 1, 1))
    assert not c2.ref_positive and c2.pred_positive and not c2.detected
    c3 = case_detection("c", pred=np.zeros(shape, bool), ref=small, spacing=(1, 1, 1))
    s = summarize([c1, c2, c3])
    assert s["patient_recall"] == pytest.approx(0.5)  # a detected, c missed
    assert s["patient_precision"] == pytest.approx(0.5)  # b is a false positive patient
    assert s["object_recall"] == pytest.approx(1 / 3)  # 3 reference objects, 1 matched
    assert s["object_precision"] == pytest.approx(0.5)  # 2 predicted objects (a's sphere, b's cube)
    assert s["Dice-TP"] == pytest.approx(c1.dice) and s["Dice"] == pytest.approx((c1.dice + 0.0) / 2)
    assert s["fp_per_patient"] == pytest.approx(1 / 3)
    bins = summarize_by_volume([c1, c3], edges=[0.5])
    assert bins["< 0.5 ml"]["n_cases"] == 1 and bins[">= 0.5 ml"]["n_cases"] == 1
    assert bin_label(2.9, [3]) == "< 3 ml" and bin_label(5, [3, 10]) == "3-10 ml"


def test_threshold_scan_picks_best_operating_point():
    shape = (24, 24, 24)
    ref = sphere(shape, (12, 12, 12), 6)
    prob = np.where(ref, 0.35, 0.0) + np.where(sphere(shape, (12, 12, 12), 9) & ~ref, 0.25, 0.0)
    best, table = threshold_scan([("a", prob, ref, (1, 1, 1))])
    assert [round(r["threshold"], 1) for r in table] == [round(0.1 * i, 1) for i in range(1, 11)]
    # >= 0.3 gives exactly the reference; >= 0.4 gives nothing
    assert best == pytest.approx(0.3)
    assert table[2]["Dice-TP"] == pytest.approx(1.0) and table[3]["patient_recall"] == 0


def test_threshold_scan_ties_go_to_argmax():
    shape = (24, 24, 24)
    ref = sphere(shape, (12, 12, 12), 6)
    # every score 0 (an all-background model): argmax, not the lowest threshold
    best, table = threshold_scan([("a", np.zeros(shape), ref, (1, 1, 1))])
    assert best is None and {r["score"] for r in table} == {0.0}
    # probabilities 0.9 inside the reference: 0.1 .. 0.9 all give the reference exactly, 0.5 among them
    best, _ = threshold_scan([("a", np.where(ref, 0.9, 0.0), ref, (1, 1, 1))])
    assert best is None
    # without 0.5 among the thresholds, a tie of several is argmax too; a single best is taken
    tie, _ = threshold_scan([("a", np.where(ref, 0.9, 0.0), ref, (1, 1, 1))], thresholds=(0.2, 0.3, 0.95))
    one, _ = threshold_scan([("a", np.where(ref, 0.25, 0.0), ref, (1, 1, 1))], thresholds=(0.2, 0.3, 0.95))
    assert tie is None and one == pytest.approx(0.2)


def test_seg_eval_cli_on_folders(tmp_path, capsys):
    import json

    import nibabel as nib

    from seg.cli.eval import main

    aff = np.diag([1.0, 1.0, 2.0, 1.0])
    (tmp_path / "pred").mkdir()
    (tmp_path / "ref").mkdir()
    shape = (30, 30, 20)
    for i, shift in enumerate([0, 2, None]):  # exact, shifted by 2 voxels, missed
        ref = cube(shape, (5, 5, 5), (15, 15, 15)).astype(np.uint8)
        pred = np.zeros_like(ref) if shift is None else cube(shape, (5 + shift, 5, 5), (15 + shift, 15, 15))
        nib.save(nib.Nifti1Image(ref, aff), str(tmp_path / "ref" / f"c{i}.nii.gz"))
        nib.save(nib.Nifti1Image(pred.astype(np.uint8), aff), str(tmp_path / "pred" / f"c{i}.nii.gz"))
    capsys.readouterr()
    assert main(["-p", str(tmp_path / "pred"), "-l", str(tmp_path / "ref"), "-o", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [c["metrics"]["1"]["Dice"] for c in s["metric_per_case"]] == pytest.approx([1.0, 0.8, 0.0])
    assert s["mean"]["1"]["Dice"] == pytest.approx(0.6)
    assert s["mean"]["1"]["n_missed"] == 1 and s["mean"]["1"]["n_spurious"] == 0
    diag = float(np.sqrt(30**2 + 30**2 + 40**2))
    assert s["metric_per_case"][2]["metrics"]["1"]["HD95"] == pytest.approx(diag)
    assert "(1 missed / 0 spurious)" in printed
    assert s["metric_per_case"][0]["prediction_file"].endswith("pred/c0.nii.gz")
    assert s["detection"]["1"]["overall"]["patient_recall"] == pytest.approx(2 / 3)
    (tmp_path / "pred" / "c2.nii.gz").unlink()
    (tmp_path / "ref" / "c2.nii.gz").unlink()
    # a prediction on another grid is named in a one-line error
    nib.save(nib.Nifti1Image(np.zeros((30, 30, 21), np.uint8), aff), str(tmp_path / "pred" / "c1.nii.gz"))
    assert main(["-p", str(tmp_path / "pred"), "-l", str(tmp_path / "ref"), "--no-surface"]) == 1
    err = capsys.readouterr().err
    assert "c1.nii.gz" in err and "differs" in err


def test_compare_paired_wilcoxon(tmp_path, capsys):
    import json

    from scipy.stats import wilcoxon

    from seg.cli.eval import main

    rng = np.random.default_rng(0)
    a = rng.uniform(0.6, 0.8, 20)
    b = a + rng.normal(0.05, 0.02, 20)  # B better on most cases
    for name, vals in (("A", a), ("B", b)):
        (tmp_path / name).mkdir()
        cases = [
            {"case_id": f"c{i}", "prediction_file": "p", "reference_file": "r", "metrics": {"1": {"Dice": float(v)}}}
            for i, v in enumerate(vals)
        ]
        (tmp_path / name / "cv_summary.json").write_text(json.dumps({"metric_per_case": cases}))
    out = tmp_path / "cmp.json"
    assert main(["compare", str(tmp_path / "A"), str(tmp_path / "B"), "-o", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["n_cases"] == 20 and r["mean_diff"] == pytest.approx(float((b - a).mean()))
    assert r["wilcoxon_p"] == pytest.approx(wilcoxon(b, a).pvalue) and r["wilcoxon_p"] < 0.01
    assert "Wilcoxon" in capsys.readouterr().out
    assert main(["compare", str(tmp_path / "A"), str(tmp_path / "nope")]) == 2


def test_compare_pairs_a_kfold_run_with_a_seg_eval_folder_by_case_id(tmp_path):
    import json

    from seg.eval.compare import compare_runs

    ids = [f"hippocampus_{i:03d}" for i in range(6)]
    cv = [
        {
            "case_id": c,
            "fold": 0,
            "prediction_file": f"/cv/fold_0/validation/{c}.nii.gz",
            "reference_file": f"/data/labelsTr/{c}.nii.gz",
            "metrics": {"1": {"Dice": 0.5 + i / 20}},
        }
        for i, c in enumerate(ids)
    ]
    ev = [
        {
            "prediction_file": f"/pred/{c}.nii.gz",
            "reference_file": f"/data/labelsTr/{c}.nii.gz",
            "metrics": {"1": {"Dice": 0.6 + i / 20}},
        }
        for i, c in enumerate(ids)
    ]
    (tmp_path / "cv").mkdir()
    (tmp_path / "ev").mkdir()
    (tmp_path / "cv" / "cv_summary.json").write_text(json.dumps({"metric_per_case": cv}))
    (tmp_path / "ev" / "summary.json").write_text(json.dumps({"metric_per_case": ev}))
    r = compare_runs(tmp_path / "cv", tmp_path / "ev")
    assert r["n_cases"] == 6 and r["mean_diff"] == pytest.approx(0.1)
    assert [p["case"] for p in r["per_case"]] == ids


def test_seg_eval_bins_cut_the_detection_table(tmp_path):
    # --bins 0.5 2: cases fall into '< 0.5 ml', '0.5-2 ml' and '>= 2 ml' by their reference volume (1 mm^3 voxels)
    import json

    import nibabel as nib

    from seg.cli.eval import main

    (tmp_path / "pred").mkdir()
    (tmp_path / "ref").mkdir()
    shape = (30, 30, 30)
    for i, side in enumerate([6, 10, 14, 15]):  # 216, 1000, 2744, 3375 voxels = 0.216 .. 3.375 ml
        ref = cube(shape, (1, 1, 1), (1 + side, 1 + side, 1 + side)).astype(np.uint8)
        nib.save(nib.Nifti1Image(ref, np.eye(4)), str(tmp_path / "ref" / f"c{i}.nii.gz"))
        nib.save(nib.Nifti1Image(ref, np.eye(4)), str(tmp_path / "pred" / f"c{i}.nii.gz"))
    args = ["-p", str(tmp_path / "pred"), "-l", str(tmp_path / "ref"), "--no-surface", "--bins", "0.5", "2"]
    assert main([*args, "-o", str(tmp_path / "out")]) == 0
    by_volume = json.loads((tmp_path / "out" / "summary.json").read_text())["detection"]["1"]["by_volume"]
    assert {k: v["n_cases"] for k, v in by_volume.items()} == {"< 0.5 ml": 1, "0.5-2 ml": 1, ">= 2 ml": 2}
    # without --bins (#41): one edge at the data's median patient volume, 1.872 ml to two figures: 1.9 ml
    assert main([*args[:-3], "-o", str(tmp_path / "own")]) == 0
    det = json.loads((tmp_path / "own" / "summary.json").read_text())["detection"]["1"]
    assert det["bins_ml"] == [1.9] and {k: v["n_cases"] for k, v in det["by_volume"].items()} == {
        "< 1.9 ml": 2,
        ">= 1.9 ml": 2,
    }


def test_the_data_bins_edge_is_the_median_patient_volume():
    """#41: volume bins from the data's own label volumes: the median of the patients with the structure (the
    tumour-free ones left out), to two significant figures; 3 ml where no patient has it."""
    from types import SimpleNamespace as C

    from seg.eval.detection import FALLBACK_BIN_ML, data_bins

    assert FALLBACK_BIN_ML == 3.0
    pats = [C(ref_positive=True, ref_ml=v) for v in (0.012, 0.0151, 0.5)] + [C(ref_positive=False, ref_ml=0.0)]
    assert data_bins(pats) == [0.015]
    assert data_bins([C(ref_positive=True, ref_ml=v) for v in (20.0, 44.0)]) == [32.0]
    assert data_bins([C(ref_positive=False, ref_ml=0.0)]) == data_bins([]) == [3.0]


# -- detection conventions (docs/metrics.md) ------------------------------------------------------------------
def test_detection_pins():
    from seg.eval.detection import DEFAULT

    assert (DEFAULT.overlap, DEFAULT.min_object_voxels, DEFAULT.matching) == (0.1, 50, "hungarian")


def test_one_rule_at_exactly_the_overlap_threshold():
    """Dice exactly 0.1 (a 10^3 reference, a 10-plane slab sharing one plane with it): the patient is detected
    and its object is matched (>= for both, one rule); one plane more (Dice 0.095): neither."""
    shape = (40, 40, 40)
    ref = cube(shape, (5, 5, 5), (15, 15, 15))
    c = case_detection("x", cube(shape, (14, 5, 5), (24, 15, 15)), ref, (1, 1, 1))
    assert c.dice == pytest.approx(0.1) and c.detected and c.matched == 1
    c = case_detection("x", cube(shape, (14, 5, 5), (25, 15, 15)), ref, (1, 1, 1))
    assert c.dice < 0.1 and not c.detected and c.matched == 0


def test_objects_are_binned_by_their_own_volume_patients_by_theirs():
    """A patient with a 4.1 ml and a 0.5 ml lesion (4.6 ml in all): the patient lands in '>= 3 ml', the small
    lesion in '< 3 ml' (it is missed: that bin's object recall is 0)."""
    shape = (48, 48, 48)
    big = cube(shape, (2, 2, 2), (18, 18, 18))  # 16^3 = 4096 voxels of 1 mm: 4.1 ml
    small = cube(shape, (30, 30, 30), (38, 38, 38))  # 512 voxels: 0.5 ml
    c = case_detection("p", pred=big, ref=big | small, spacing=(1, 1, 1))
    bins = summarize_by_volume([c], edges=[3.0])
    assert bins[">= 3 ml"]["n_positive"] == 1 and bins["< 3 ml"]["n_positive"] == 0
    assert bins["< 3 ml"]["n_objects"] == 1 and bins["< 3 ml"]["object_recall"] == 0.0
    assert bins[">= 3 ml"]["n_objects"] == 1 and bins[">= 3 ml"]["object_recall"] == 1.0


def test_raidionics_matching_pairs_every_overlap_with_six_connectivity():
    """One prediction over two reference lesions: Hungarian matches one (one-to-one), the group's code both
    (every overlapping pair); two cubes touching only at a corner are one object in 26-connectivity, two in 6."""
    shape = (40, 40, 40)
    a, b = cube(shape, (2, 2, 2), (10, 10, 10)), cube(shape, (12, 2, 2), (20, 10, 10))
    pred = cube(shape, (2, 2, 2), (20, 10, 10))  # covers both and the gap between
    h = case_detection("h", pred, a | b, (1, 1, 1))
    r = case_detection("r", pred, a | b, (1, 1, 1), matching="raidionics")
    assert (h.ref_objects, h.matched) == (2, 1) and (r.ref_objects, r.matched) == (2, 2)
    assert summarize([r])["object_precision"] == 1.0 and summarize([h])["object_recall"] == 0.5
    corner = cube(shape, (22, 22, 22), (27, 27, 27)) | cube(shape, (27, 27, 27), (32, 32, 32))
    assert case_detection("c", corner, corner, (1, 1, 1)).ref_objects == 1
    assert case_detection("c", corner, corner, (1, 1, 1), matching="raidionics").ref_objects == 2
    # no 0.1 cut in raidionics: a sliver of overlap is a match
    sliver = cube(shape, (9, 2, 2), (30, 10, 10))  # Dice 0.069 with a
    assert case_detection("s", sliver, a, (1, 1, 1), min_voxels=1, matching="raidionics").matched == 1
    assert case_detection("s", sliver, a, (1, 1, 1), min_voxels=1).matched == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hd95_equals_monais_exactly_and_not_medpys_pooled_hd95(seed):
    """seg's HD95 is MONAI's (the larger of the two directed 95th percentiles), to the last digit; medpy's
    ``hd95`` pools both directions first, which gives a smaller figure on a pair whose two directions differ:
    docs/metrics.md says which one seg reports."""
    import torch
    from monai.metrics import compute_hausdorff_distance

    medpy = pytest.importorskip("medpy.metric.binary")
    rng = np.random.default_rng(seed)
    spacing = (1.0, 1.5, 2.5)
    shape = (40, 36, 24)
    ref = sphere(shape, (20, 18, 12), 9, spacing) & (rng.random(shape) > 0.05)
    pred = sphere(shape, (22, 17, 12), 8, spacing) | sphere(shape, (10, 10, 6), 3, spacing)  # a far spurious blob
    # both ways round: the far blob in the prediction, then in the reference (a one-directed HD95 fails one)
    for p, r in ((pred, ref), (ref, pred)):
        t = [torch.from_numpy(a[None, None].astype(np.float32)) for a in (p, r)]
        monai = float(
            compute_hausdorff_distance(*t, include_background=True, percentile=95, spacing=list(spacing))[0, 0]
        )
        seg = binary_metrics(p, r, spacing)["HD95"]
        assert seg == monai
        pooled = medpy.hd95(p, r, voxelspacing=spacing)
        assert pooled < seg - 0.1  # the conventions differ here, by more than a tenth of a millimetre


def test_seg_eval_surface_tolerance_default_is_2mm_with_a_case_on_each_side(tmp_path):
    """A cube shifted by 2 voxels of 1 mm: its surface points lie 0, 1 or 2 mm from the reference's. seg-eval's
    default tolerance (2 mm) gives the surface Dice of a 2 mm tolerance; 1.9 mm and 2.1 mm fall on either side."""
    import json

    import nibabel as nib

    from seg.cli.eval import main

    ref = cube((30, 30, 30), (8, 8, 8), (20, 20, 20))
    pred = cube((30, 30, 30), (10, 8, 8), (22, 20, 20))
    for folder, m in (("pred", pred), ("ref", ref)):
        (tmp_path / folder).mkdir()
        nib.save(nib.Nifti1Image(m.astype(np.uint8), np.eye(4)), str(tmp_path / folder / "c0.nii.gz"))
    assert (
        main(["-p", str(tmp_path / "pred"), "-l", str(tmp_path / "ref"), "-o", str(tmp_path / "o"), "--workers", "1"])
        == 0
    )
    got = json.loads((tmp_path / "o" / "summary.json").read_text())["mean"]["1"]["SurfaceDice"]
    at = {
        t: binary_metrics(pred, ref, spacing=(1.0, 1.0, 1.0), surface=True, tolerance_mm=t)["SurfaceDice"]
        for t in (1.9, 2.0, 2.1)
    }
    assert got == pytest.approx(at[2.0]) and at[1.9] < at[2.0] <= at[2.1] and got != pytest.approx(at[1.9])


def _nnunet_v2_rules(ref: np.ndarray, pred: np.ndarray, label: int) -> dict:
    """nnU-Net v2's evaluation (nnunetv2/evaluation/evaluate_predictions.py: compute_tp_fp_fn_tn, then
    compute_metrics' formulas), restated here from its published rules, written apart from seg.eval: counts over
    the whole image (no ignore label), Dice 2TP/(2TP+FP+FN) and IoU TP/(TP+FP+FN) as numpy divides them (0/0 is
    NaN)."""
    r, p = ref == label, pred == label
    tp, fp, fn = np.sum(r & p), np.sum(~r & p), np.sum(r & ~p)
    with np.errstate(invalid="ignore"):
        dice, iou = np.float64(2 * tp) / (2 * tp + fp + fn), np.float64(tp) / (tp + fp + fn)
    return {"Dice": dice, "IoU": iou, "TP": tp, "FP": fp, "FN": fn, "n_pred": fp + tp, "n_ref": fn + tp}


def test_dice_iou_counts_and_means_equal_nnunet_v2(tmp_path):
    """docs/metrics.md: Dice, IoU and the voxel counts equal nnU-Net v2's compute_metrics, the per-label mean its
    np.nanmean over cases and foreground_mean its mean of the foreground labels' means. 14 pairs of 3-label maps:
    random blobs, a label empty in both (NaN, left out of the mean), missed, spurious, identical."""
    import json
    from pathlib import Path

    import nibabel as nib
    from scipy import ndimage

    from seg.eval.evaluate import evaluate_folders

    rng = np.random.default_rng(46)
    shape, labels = (18, 16, 14), {0: "background", 1: "a", 2: "b", 3: "c"}

    def blobs():
        smooth = ndimage.gaussian_filter(rng.normal(size=shape), 2.0)
        return np.digitize(smooth, np.quantile(smooth, [0.55, 0.75, 0.9]))

    pairs = []
    for i in range(10):
        ref = blobs().astype(np.uint8)
        pred = np.where(rng.random(shape) < 0.15 * (i % 3), rng.integers(0, 4, shape), ref).astype(np.uint8)
        pairs.append((ref, pred))
    ref = blobs().astype(np.uint8)
    pairs += [
        (np.where(ref == 3, 0, ref), np.where(ref == 3, 0, ref)),  # label 3 empty in both: NaN
        (ref, np.where(ref == 2, 0, ref)),  # label 2 missed
        (np.where(ref == 1, 0, ref), ref),  # label 1 spurious
        (ref, ref),
    ]
    for d in ("p", "r"):
        (tmp_path / d).mkdir()
    for i, (r, p) in enumerate(pairs):
        nib.save(nib.Nifti1Image(r, np.diag([0.8, 1.0, 1.5, 1.0])), str(tmp_path / "r" / f"c{i:02d}.nii.gz"))
        nib.save(nib.Nifti1Image(p, np.diag([0.8, 1.0, 1.5, 1.0])), str(tmp_path / "p" / f"c{i:02d}.nii.gz"))
    evaluate_folders(tmp_path / "p", tmp_path / "r", labels, tmp_path / "o", surface=False)
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    theirs = {lab: [_nnunet_v2_rules(r, p, lab) for r, p in pairs] for lab in (1, 2, 3)}
    assert [Path(c["prediction_file"]).name for c in s["metric_per_case"]] == [f"c{i:02d}.nii.gz" for i in range(14)]
    for lab, cases in theirs.items():
        for c, t in zip(s["metric_per_case"], cases):
            ours = c["metrics"][str(lab)]
            for k, v in t.items():
                if np.isnan(v):
                    assert ours[k] is None or np.isnan(ours[k]), (lab, k)  # NaN is written as null in JSON
                else:
                    assert ours[k] == pytest.approx(float(v), abs=1e-12), (lab, k, c["prediction_file"])
        for k in ("Dice", "IoU"):
            assert s["mean"][str(lab)][k] == pytest.approx(float(np.nanmean([t[k] for t in cases])), abs=1e-12)
    for k in ("Dice", "IoU"):
        fg = np.mean([np.nanmean([t[k] for t in theirs[lab]]) for lab in (1, 2, 3)])
        assert s["foreground_mean"][k] == pytest.approx(float(fg), abs=1e-12)
    assert sum(np.isnan(t["Dice"]) for t in theirs[3]) == 1  # the both-empty case is there, and left out
