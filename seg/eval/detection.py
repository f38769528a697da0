"""The AGUNet paper's detection metrics, in two matching modes.

Patient-wise: a patient with a tumour is a true positive when the prediction's Dice >= ``overlap`` (0.1);
"Dice" is the mean over all patients with a tumour, "Dice-TP" over the detected ones; a patient whose
prediction is not empty but is no true detection counts as a false positive. Object-wise: the connected
components of reference and prediction, those under ``min_object_voxels`` (50) removed, are matched:

* ``hungarian`` (default): 26-connected components, one-to-one Hungarian matching on their Dice, a pair
  matching when its Dice >= ``overlap``, the same rule as a patient's;
* ``raidionics``: what the group's public validation code does (dbouget/validation_metrics_computation,
  ``raidionicsval``, InstanceSegmentationValidation): 6-connected components, every reference/prediction
  pair that overlaps at all is a match (no threshold, no one-to-one step); object recall counts the
  reference objects with a match, precision the predicted ones. Use it to compare with Raidionics' figures
  and the paper's.

By volume (bins in ml): patient-wise figures bin each patient by its total tumour volume; object-wise
figures bin each object by its own volume (a 1 ml lesion of a patient with 20 ml in all is a < 3 ml
object). The probability threshold can be scanned for the operating point that maximises
(Dice-TP + patient-wise recall) / 2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
from scipy.optimize import linear_sum_assignment

from seg.config import check_option
from seg.data.components import component_indices


class Matching(str, Enum):
    HUNGARIAN = "hungarian"
    RAIDIONICS = "raidionics"


@dataclass(frozen=True)
class DetectionParams:
    """The paper's detection settings; the one home of their defaults (``seg-eval`` and ``cv.*`` read them).

    Args:
        overlap: Dice a patient needs to count as detected, and (``hungarian``) an object match too.
        min_object_voxels: connected components smaller than this are dropped before matching.
        matching: ``hungarian`` or ``raidionics`` (see the module docstring).
    """

    overlap: float = 0.1
    min_object_voxels: int = 50
    matching: str = "hungarian"

    def __post_init__(self) -> None:
        object.__setattr__(self, "matching", check_option("matching", self.matching, Matching))

    @classmethod
    def from_mapping(cls, m, overlap_key: str = "overlap_threshold") -> DetectionParams:
        """From a ``cv`` config: ``overlap_threshold``, ``min_object_voxels``, ``matching``; null or absent: the
        default."""
        m = m or {}
        kw = {}
        if m.get(overlap_key) is not None:
            kw["overlap"] = float(m.get(overlap_key))
        if m.get("min_object_voxels") is not None:
            kw["min_object_voxels"] = int(m.get("min_object_voxels"))
        if m.get("matching") is not None:
            kw["matching"] = str(m.get("matching"))
        return cls(**kw)

    @property
    def connectivity(self) -> int:
        return 6 if self.matching == Matching.RAIDIONICS else 26


DEFAULT = DetectionParams()


@dataclass
class CaseDetection:
    case_id: str
    ref_ml: float  # the patient's total tumour volume
    dice: float  # NaN when reference and prediction are both empty
    ref_positive: bool
    pred_positive: bool
    ref_object_ml: list = field(default_factory=list)  # volume (ml) of each reference object
    ref_matched: list = field(default_factory=list)  # whether each reference object has a match
    pred_object_ml: list = field(default_factory=list)
    pred_matched: list = field(default_factory=list)
    overlap: float = DEFAULT.overlap  # Dice needed for a patient-wise true positive
    pred_ml: float = 0.0  # the prediction's total volume
    matching: str = DEFAULT.matching  # the rules its summary follows

    @property
    def detected(self) -> bool:
        return self.ref_positive and not math.isnan(self.dice) and self.dice >= self.overlap

    @property
    def ref_objects(self) -> int:
        return len(self.ref_object_ml)

    @property
    def pred_objects(self) -> int:
        return len(self.pred_object_ml)

    @property
    def matched(self) -> int:
        """Reference objects with a match."""
        return int(sum(self.ref_matched))

    @property
    def matched_ref_ml(self) -> list:
        return [v for v, m in zip(self.ref_object_ml, self.ref_matched) if m]


def components(mask: np.ndarray, min_voxels: int, connectivity: int = 26) -> list[np.ndarray]:
    """Connected components with at least ``min_voxels`` voxels, as flat index arrays."""
    return component_indices(mask, min_voxels, connectivity=connectivity)


def _dice_matrix(ref_objs: list[np.ndarray], pred_objs: list[np.ndarray]) -> np.ndarray:
    dice = np.zeros((len(ref_objs), len(pred_objs)))
    for i, r in enumerate(ref_objs):
        for j, p in enumerate(pred_objs):
            inter = np.intersect1d(r, p, assume_unique=True).size
            if inter:
                dice[i, j] = 2 * inter / (r.size + p.size)
    return dice


def match_objects(
    ref_objs: list[np.ndarray],
    pred_objs: list[np.ndarray],
    overlap: float = DEFAULT.overlap,
    matching: str = DEFAULT.matching,
) -> list[tuple[int, int, float]]:
    """The matched (reference, prediction, Dice) pairs: Hungarian one-to-one with Dice >= ``overlap``, or
    (``raidionics``) every overlapping pair."""
    if not ref_objs or not pred_objs:
        return []
    dice = _dice_matrix(ref_objs, pred_objs)
    if matching == Matching.RAIDIONICS:
        return [(int(i), int(j), float(dice[i, j])) for i, j in zip(*np.nonzero(dice > 0))]
    rows, cols = linear_sum_assignment(-dice)
    return [(int(i), int(j), float(dice[i, j])) for i, j in zip(rows, cols) if dice[i, j] > 0 and dice[i, j] >= overlap]


def case_detection(
    case_id: str,
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    overlap: float = DEFAULT.overlap,
    min_voxels: int = DEFAULT.min_object_voxels,
    matching: str = DEFAULT.matching,
) -> CaseDetection:
    """Patient- and object-wise detection facts of one case (binary masks)."""
    pred, ref = pred.astype(bool), ref.astype(bool)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    n_p, n_r = int(pred.sum()), int(ref.sum())
    inter = int((pred & ref).sum())
    dice = math.nan if n_p + n_r == 0 else 2 * inter / (n_p + n_r)
    params = DetectionParams(overlap, min_voxels, matching)
    conn = params.connectivity
    ref_objs, pred_objs = components(ref, min_voxels, conn), components(pred, min_voxels, conn)
    matches = match_objects(ref_objs, pred_objs, overlap, matching)
    ref_hit, pred_hit = {i for i, _, _ in matches}, {j for _, j, _ in matches}
    return CaseDetection(
        case_id,
        n_r * voxel_ml,
        dice,
        n_r > 0,
        n_p > 0,
        [o.size * voxel_ml for o in ref_objs],
        [i in ref_hit for i in range(len(ref_objs))],
        [o.size * voxel_ml for o in pred_objs],
        [j in pred_hit for j in range(len(pred_objs))],
        overlap,
        n_p * voxel_ml,
        str(params.matching),
    )


def _f1(p: float, r: float) -> float:
    return math.nan if math.isnan(p) or math.isnan(r) or p + r == 0 else 2 * p * r / (p + r)


def _div(a: float, b: float) -> float:
    return a / b if b else math.nan


def _object_figures(ref: list[tuple[float, bool]], pred: list[tuple[float, bool]], n_cases: int) -> dict:
    """Object-wise recall, precision, F1 and false positives per patient from (volume, matched) per object."""
    o_recall = _div(sum(m for _, m in ref), len(ref))
    o_precision = _div(sum(m for _, m in pred), len(pred))
    return {
        "n_objects": len(ref),
        "fp_per_patient": _div(sum(not m for _, m in pred), n_cases),
        "object_recall": o_recall,
        "object_precision": o_precision,
        "object_f1": _f1(o_precision, o_recall),
    }


def _patient_figures(cases: Sequence[CaseDetection]) -> dict:
    pos = [c for c in cases if c.ref_positive]
    tp = [c for c in pos if c.detected]
    return _patient_counts(cases, pos, tp, [c for c in cases if c.pred_positive and not c.detected])


def _patient_counts(cases, pos: list, tp: list, fp: list, counted_f1: bool = False) -> dict:
    """The patient-wise figures from the positives, the detections and the false positives: F1 from precision
    and recall, or (``counted_f1``, Raidionics' form) as 2TP / (2TP + FP + FN), which is 0, not undefined,
    where nothing was detected."""
    recall, precision = _div(len(tp), len(pos)), _div(len(tp), len(tp) + len(fp))
    f1 = _div(2 * len(tp), len(tp) + len(fp) + len(pos)) if counted_f1 else _f1(precision, recall)
    return {
        "n_cases": len(cases),
        "n_positive": len(pos),
        "Dice": float(np.mean([c.dice for c in pos])) if pos else math.nan,
        "Dice-TP": float(np.mean([c.dice for c in tp])) if tp else math.nan,
        "patient_recall": recall,
        "patient_precision": precision,
        "patient_f1": f1,
    }


def summarize(cases: Sequence[CaseDetection], n_cases: int | None = None) -> dict:
    """Patient-wise and object-wise metrics over ``cases`` (Raidionics' rules where they were matched in that
    mode, :func:`summarize_raidionics`). ``n_cases``: the patients ``fp_per_patient`` is counted over (default:
    ``cases``; a volume bin's false positives are counted over every patient evaluated)."""
    if cases and cases[0].matching == Matching.RAIDIONICS:
        return summarize_raidionics(cases, n_cases)
    ref = [(v, m) for c in cases for v, m in zip(c.ref_object_ml, c.ref_matched)]
    pred = [(v, m) for c in cases for v, m in zip(c.pred_object_ml, c.pred_matched)]
    return {**_patient_figures(cases), **_object_figures(ref, pred, len(cases) if n_cases is None else n_cases)}


RAIDIONICS_POSITIVE_ML = 0.1  # their true_positive_volume_thresholds (the value of their own tests' configs)


def raidionics_object_figures(c: CaseDetection) -> tuple[float, float, float]:
    """One patient's object recall, precision and F1 as Raidionics' ``InstanceSegmentationValidation`` gives
    them: nothing predicted scores (1, 1, 1) against no reference object and (0, 1, 0.5) against some;
    predictions with no overlapping pair score (0, 1, 0)."""
    if not c.pred_objects:
        return (1.0, 1.0, 1.0) if not c.ref_objects else (0.0, 1.0, 0.5)
    if not any(c.pred_matched):
        return 0.0, 1.0, 0.0
    recall, precision = c.matched / c.ref_objects, sum(c.pred_matched) / c.pred_objects
    return recall, precision, 2 * precision * recall / (precision + recall)


def summarize_raidionics(cases: Sequence[CaseDetection], n_cases: int | None = None) -> dict:
    """The detection figures as Raidionics' validation code computes them (``raidionicsval``:
    ``compute_patientwise_fold_metrics`` and the per-patient object figures averaged): a patient is positive
    with more than ``RAIDIONICS_POSITIVE_ML`` of reference tumour, detected at Dice strictly above ``overlap``;
    a false positive is a tumour-free patient with at least that much predicted (a missed tumour patient is
    a false negative only); object recall, precision and F1 are each patient's, averaged over the patients.
    ``Dice``, ``Dice-TP`` and ``fp_per_patient`` keep seg's definitions (over these positives and detections)."""
    pos = [c for c in cases if c.ref_ml > RAIDIONICS_POSITIVE_ML]
    tp = [c for c in pos if c.dice > c.overlap]
    fp = [c for c in cases if c.ref_ml <= RAIDIONICS_POSITIVE_ML and c.pred_ml >= RAIDIONICS_POSITIVE_ML]
    per_patient = np.array([raidionics_object_figures(c) for c in cases]) if cases else np.full((1, 3), math.nan)
    o_recall, o_precision, o_f1 = (float(x) for x in per_patient.mean(0))
    return {
        **_patient_counts(cases, pos, tp, fp, counted_f1=True),
        "n_objects": sum(c.ref_objects for c in cases),
        "fp_per_patient": _div(sum(not m for c in cases for m in c.pred_matched), n_cases or len(cases)),
        "object_recall": o_recall,
        "object_precision": o_precision,
        "object_f1": o_f1,
    }


def bin_label(ml: float, edges: Sequence[float]) -> str:
    """'< 3 ml', '3-10 ml', '>= 10 ml' style names for the bins cut at ``edges``."""
    edges = sorted(edges)
    if ml < edges[0]:
        return f"< {edges[0]:g} ml"
    for lo, hi in zip(edges, edges[1:]):
        if ml < hi:
            return f"{lo:g}-{hi:g} ml"
    return f">= {edges[-1]:g} ml"


FALLBACK_BIN_ML = 3.0  # the meningioma papers' edge: the data's own edge where no patient has the structure


def data_bins(cases: Sequence[CaseDetection]) -> list[float]:
    """The volume bins a dataset gets unless configured: one edge at the median total volume of the patients
    with the structure, to two significant figures (about half of them on each side);
    :data:`FALLBACK_BIN_ML` where no patient has it."""
    vols = [c.ref_ml for c in cases if c.ref_positive]
    median = float(np.median(vols)) if vols else 0.0
    return [float(f"{median:.2g}")] if median > 0 else [FALLBACK_BIN_ML]


def summarize_by_volume(cases: Sequence[CaseDetection], edges: Sequence[float] = (3.0,)) -> dict[str, dict]:
    """:func:`summarize` per volume bin: the patient-wise figures over the patients whose total tumour volume
    falls in the bin (patients without a tumour are in no bin), the object-wise ones over the objects whose
    own volume does (reference objects for recall, predicted ones for precision); ``fp_per_patient`` is a
    bin's false-positive objects over every patient evaluated, so the bins' figures add up to the overall
    one. In ``raidionics`` mode every figure follows their rules over the bin's patients (their false positives
    over those patients too)."""
    out = {}
    names = [bin_label(x, edges) for x in [min(edges) - 1] + list(sorted(edges))]
    for name in names:
        patients = [c for c in cases if c.ref_positive and bin_label(c.ref_ml, edges) == name]
        if cases and cases[0].matching == Matching.RAIDIONICS:
            out[name] = summarize_raidionics(patients)
            continue
        ref = [(v, m) for c in cases for v, m in zip(c.ref_object_ml, c.ref_matched) if bin_label(v, edges) == name]
        pred = [(v, m) for c in cases for v, m in zip(c.pred_object_ml, c.pred_matched) if bin_label(v, edges) == name]
        out[name] = {**_patient_figures(patients), **_object_figures(ref, pred, len(cases))}
    return out


def threshold_scan(
    prob_cases: Sequence[tuple[str, np.ndarray, np.ndarray, Sequence[float]]],
    thresholds: Sequence[float] = tuple(np.round(np.arange(0.1, 1.01, 0.1), 2)),
    overlap: float = DEFAULT.overlap,
    min_voxels: int = DEFAULT.min_object_voxels,
    matching: str = DEFAULT.matching,
) -> tuple[float | None, list[dict]]:
    """Patient-wise metrics at each probability threshold; returns the best threshold by
    (Dice-TP + patient recall) / 2 and the table. ``prob_cases``: (case id, foreground probability,
    reference mask, spacing). A voxel is positive when its probability >= the threshold.

    Ties go to argmax: the best is ``None`` (argmax masks, what a two-class softmax gives at 0.5) unless a
    threshold scores strictly better than 0.5 does, or, without 0.5 in ``thresholds``, than every other."""
    table = []
    for t in thresholds:
        cases = [case_detection(cid, p >= t, r, sp, overlap, min_voxels, matching) for cid, p, r, sp in prob_cases]
        s = summarize(cases)
        dtp = 0.0 if math.isnan(s["Dice-TP"]) else s["Dice-TP"]
        rec = 0.0 if math.isnan(s["patient_recall"]) else s["patient_recall"]
        s.update(threshold=float(t), score=(dtp + rec) / 2)
        table.append(s)
    top = max(s["score"] for s in table)
    at_half = [s["score"] for s in table if abs(s["threshold"] - 0.5) < 1e-9]
    winners = [s for s in table if s["score"] == top]
    if (at_half and at_half[0] >= top) or (not at_half and len(winners) > 1):
        return None, table
    return winners[0]["threshold"], table
