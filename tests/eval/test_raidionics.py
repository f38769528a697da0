"""``matching: raidionics`` gives Raidionics' figures: checked against a re-implementation of their published
validation code written here apart from seg's (dbouget/validation_metrics_computation, ``raidionicsval``:
``InstanceSegmentationValidation`` for a patient's objects, ``compute_patientwise_fold_metrics`` for the
patient-wise figures, the per-patient object figures averaged as ``compute_singe_fold_average_metrics`` does),
on cases built from the shared hippocampus labels (when present) and on synthetic ones: tumours missed,
found, split, merged, shrunk, and tumour-free patients with and without false alarms."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from seg.eval.detection import RAIDIONICS_POSITIVE_ML, case_detection, summarize, summarize_by_volume
from tests.conftest import SHARED_DATA

TINY = 50  # their tiny_objects_removal_threshold, seg's min_object_voxels
OVERLAP = 0.1


# -- their code, re-implemented (not seg's: scipy's default 6-connected labels, bounding-box pre-check) ----------
def _objects(mask):
    lab, n = ndimage.label(mask)
    keep = np.zeros_like(mask, bool)
    for i in range(1, n + 1):
        if np.count_nonzero(lab == i) >= TINY:
            keep |= lab == i
    lab, n = ndimage.label(keep)
    return lab, n, ndimage.find_objects(lab)


def _box_overlap(a, b):
    d = [min(x.stop, y.stop) - max(x.start, y.start) for x, y in zip(a, b)]
    return all(v >= 0 for v in d)


def their_patient_objects(gt, det):
    """InstanceSegmentationValidation.run(): (recall, precision, F1) of one patient."""
    g_lab, g_n, g_box = _objects(gt)
    d_lab, d_n, d_box = _objects(det) if det.any() else (None, 0, [])
    if d_n == 0:
        return (1.0, 1.0, 1.0) if g_n == 0 else (0.0, 1.0, 0.5)
    pairs = []
    for g in range(g_n):
        for d in range(d_n):
            if _box_overlap(g_box[g], d_box[d]):
                a, b = g_lab == g + 1, d_lab == d + 1
                dice = 2.0 * np.sum(a & b) / (a.sum() + b.sum())
                if dice > 0:
                    pairs.append((g + 1, d + 1))
    if not pairs:
        return 0.0, 1.0, 0.0
    recall = len({p[0] for p in pairs}) / g_n
    precision = len({p[1] for p in pairs}) / d_n
    return recall, precision, 2.0 * precision * recall / (precision + recall)


def their_figures(patients, spacing):
    """compute_patientwise_fold_metrics (one fold, their 1e-6 left out) and the averaged object figures."""
    ml = float(np.prod(spacing)) / 1000.0
    tp = fp = fn = 0
    objects = []
    for gt, det in patients:
        gt_ml, det_ml = gt.sum() * ml, det.sum() * ml
        dice = 2.0 * np.sum(gt & det) / (gt.sum() + det.sum()) if gt.sum() + det.sum() else 1.0
        positive = gt_ml > 0.1
        tp += positive and dice > OVERLAP
        fn += positive and dice <= OVERLAP
        fp += (not positive) and det_ml >= 0.1
        objects.append(their_patient_objects(gt, det))
    o = np.mean(objects, 0)
    return {
        "patient_recall": tp / (tp + fn),
        "patient_precision": tp / (tp + fp),
        "patient_f1": 2 * tp / (2 * tp + fp + fn),
        "object_recall": o[0],
        "object_precision": o[1],
        "object_f1": o[2],
    }


# -- the cases ----------------------------------------------------------------------------------------------
def _variants(ref, rng):
    """Predictions of a reference as a network might give them."""
    far = np.zeros_like(ref)
    far[tuple(slice(0, 5) for _ in ref.shape)] = True
    yield ref  # found
    yield np.zeros_like(ref)  # missed
    yield ndimage.binary_erosion(ref, iterations=2)  # shrunk (may split, or vanish below the tiny limit)
    yield np.roll(ref, 3, axis=0) | far  # shifted, with a false alarm
    yield ref & (rng.random(ref.shape) > 0.3)  # speckled: many small pieces
    yield far  # only a false alarm


def _patients(refs, rng):
    out = []
    for ref in refs:
        out += [(ref, pred.astype(bool)) for pred in _variants(ref, rng)]
        out.append((np.zeros_like(ref), np.zeros_like(ref)))  # tumour-free, nothing predicted
        out.append((np.zeros_like(ref), np.roll(ref, 5, axis=1)))  # tumour-free, a false alarm
    return out


def _synthetic(rng, n=4, shape=(40, 40, 40)):
    refs = []
    for _ in range(n):
        m = np.zeros(shape, bool)
        for _ in range(rng.integers(1, 4)):  # 1 to 3 lesions, one of them may touch another only at a corner
            c = rng.integers(8, 32, 3)
            r = rng.integers(3, 7)
            g = np.ogrid[tuple(slice(0, s) for s in shape)]
            m |= sum((x - cc) ** 2 for x, cc in zip(g, c)) <= r * r
        refs.append(m)
    return refs


def _hippocampus(n=6):
    import nibabel as nib

    root = SHARED_DATA / "hippocampus" / "labelsTr"
    if not root.is_dir():
        pytest.skip(f"real data not present at {root}")
    files = sorted(root.glob("*.nii.gz"))[:n]
    return [np.asanyarray(nib.load(f).dataobj) > 0 for f in files]


@pytest.mark.parametrize("source", ["synthetic", "hippocampus"])
def test_raidionics_mode_equals_their_code(source):
    rng = np.random.default_rng(7)
    refs = _synthetic(rng) if source == "synthetic" else _hippocampus()
    spacing = (1.0, 1.0, 1.0)
    patients = _patients(refs, rng)
    cases = [
        case_detection(str(i), det, gt, spacing, OVERLAP, TINY, matching="raidionics")
        for i, (gt, det) in enumerate(patients)
    ]
    ours, theirs = summarize(cases), their_figures(patients, spacing)
    for k, v in theirs.items():
        assert ours[k] == pytest.approx(v, abs=1e-9), (k, ours[k], v)
    # the rules differ from seg's default: the same cases under hungarian give other figures
    default = summarize([case_detection(str(i), d, g, spacing, OVERLAP, TINY) for i, (g, d) in enumerate(patients)])
    assert any(abs(default[k] - theirs[k]) > 0.01 for k in theirs)


def test_raidionics_rules_at_their_boundaries():
    """Dice exactly 0.1 is not a detection (strictly above); a tumour-free patient with 0.1 ml predicted is a
    false positive, with less it is not; a patient with a missed tumour is no false positive."""
    assert RAIDIONICS_POSITIVE_ML == 0.1
    shape, sp = (30, 30, 30), (1.0, 1.0, 1.0)
    ref = np.zeros(shape, bool)
    ref[:10, :10, :10] = True  # 1000 voxels, 1 ml
    pred = np.zeros(shape, bool)
    pred[:10, :10, :1] = True  # 100 voxels inside: Dice 200 / 1100 = 0.18
    pred2 = np.zeros(shape, bool)
    pred2[:5, :10, :1] = True  # 50 voxels inside: Dice 100 / 1050 = 0.095
    d = [case_detection("a", p, ref, sp, matching="raidionics") for p in (pred, pred2)]
    assert d[0].dice > 0.1 > d[1].dice
    s = summarize(d)
    assert s["patient_recall"] == 0.5 and s["patient_precision"] == 1.0  # the miss is no false positive
    # exactly at the line: a 1-voxel-thick 10x10 plate against a 10x10x10 cube is Dice 0.1818; scale to 0.1
    exact = case_detection("x", pred, ref, sp, matching="raidionics")
    exact.dice = 0.1
    assert summarize([exact])["patient_recall"] == 0.0
    free = np.zeros(shape, bool)
    for voxels, counted in ((100, True), (99, False)):  # 0.1 ml at 1 mm^3 voxels is 100 voxels
        alarm = np.zeros(shape, bool)
        alarm.reshape(-1)[:voxels] = True
        c = case_detection("f", alarm, free, sp, matching="raidionics")
        s = summarize([d[0], c])
        assert s["patient_precision"] == (0.5 if counted else 1.0), (voxels, s["patient_precision"])


def test_per_bin_false_positives_add_up_to_the_overall_figure():
    """#46: a bin's fp_per_patient is its false-positive objects over every patient evaluated (a tumour-free
    patient's false alarms were divided by the bin's tumour patients only: 1.087 against 0.553 overall)."""
    shape, sp = (40, 40, 40), (1.0, 1.0, 1.0)
    small, large = np.zeros(shape, bool), np.zeros(shape, bool)
    small[:10, :10, :10] = True  # 1 ml
    large[:20, :20, :20] = True  # 8 ml
    alarm = np.zeros(shape, bool)
    alarm[30:35, 30:35, 30:35] = True  # a 0.125-ml false alarm
    cases = [
        case_detection("s", small | alarm, small, sp),
        case_detection("l", large, large, sp),
        case_detection("free", alarm, np.zeros(shape, bool), sp),
    ]
    overall = summarize(cases)["fp_per_patient"]
    bins = summarize_by_volume(cases, (3.0,))
    assert overall == pytest.approx(2 / 3)
    assert sum(b["fp_per_patient"] for b in bins.values()) == pytest.approx(overall)
    assert bins["< 3 ml"]["fp_per_patient"] == pytest.approx(2 / 3) and not math.isnan(bins[">= 3 ml"]["n_cases"])
