"""The AGUNet paper's detection metrics (the group's validation code, see REFERENCES.md).

Patient-wise: a patient with a tumour is a true positive if the prediction's Dice >= ``overlap`` (0.1);
"Dice" is the mean over all patients with a tumour, "Dice-TP" over the detected ones; a patient whose
prediction is not empty but is no true detection counts as a false positive. Object-wise: connected
components of reference and prediction, components under ``min_voxels`` (50) removed, Hungarian
matching on Dice between overlapping objects, a match needs Dice > ``overlap``. Everything can be
stratified by reference volume (bins in ml), and the probability threshold can be scanned for the
operating point that maximises (Dice-TP + patient-wise recall) / 2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from seg.data.components import component_indices


@dataclass(frozen=True)
class DetectionParams:
    """The paper's detection settings; the one home of their defaults (``seg-eval`` and ``cv.*`` read them).

    Args:
        overlap: Dice a patient needs to count as detected, and an object match must exceed.
        min_object_voxels: connected components smaller than this are dropped before matching.
    """

    overlap: float = 0.1
    min_object_voxels: int = 50

    @classmethod
    def from_mapping(cls, m, overlap_key: str = "overlap_threshold") -> DetectionParams:
        """From a ``cv`` config: ``overlap_threshold`` and ``min_object_voxels``; null or absent = default."""
        m = m or {}
        kw = {}
        if m.get(overlap_key) is not None:
            kw["overlap"] = float(m.get(overlap_key))
        if m.get("min_object_voxels") is not None:
            kw["min_object_voxels"] = int(m.get("min_object_voxels"))
        return cls(**kw)


DEFAULT = DetectionParams()


@dataclass
class CaseDetection:
    case_id: str
    ref_ml: float
    dice: float  # NaN when reference and prediction are both empty
    ref_positive: bool
    pred_positive: bool
    ref_objects: int
    pred_objects: int
    matched: int
    matched_ref_ml: list  # volumes (ml) of the reference objects that were matched
    ref_object_ml: list  # volumes (ml) of all reference objects
    overlap: float = DEFAULT.overlap  # Dice needed for a patient-wise true positive

    @property
    def detected(self) -> bool:
        return self.ref_positive and not math.isnan(self.dice) and self.dice >= self.overlap


def components(mask: np.ndarray, min_voxels: int) -> list[np.ndarray]:
    """Connected components (26-connectivity in 3D) with at least ``min_voxels`` voxels, as index arrays."""
    return component_indices(mask, min_voxels, connectivity=26)


def match_objects(
    ref_objs: list[np.ndarray], pred_objs: list[np.ndarray], overlap: float = DEFAULT.overlap
) -> list[tuple[int, int, float]]:
    """Hungarian matching on Dice between overlapping objects; pairs with Dice > ``overlap``."""
    if not ref_objs or not pred_objs:
        return []
    dice = np.zeros((len(ref_objs), len(pred_objs)))
    for i, r in enumerate(ref_objs):
        for j, p in enumerate(pred_objs):
            inter = np.intersect1d(r, p, assume_unique=True).size
            if inter:
                dice[i, j] = 2 * inter / (r.size + p.size)
    rows, cols = linear_sum_assignment(-dice)
    return [(int(i), int(j), float(dice[i, j])) for i, j in zip(rows, cols) if dice[i, j] > overlap]


def case_detection(
    case_id: str,
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    overlap: float = DEFAULT.overlap,
    min_voxels: int = DEFAULT.min_object_voxels,
) -> CaseDetection:
    """Patient- and object-wise detection facts of one case (binary masks)."""
    pred, ref = pred.astype(bool), ref.astype(bool)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    n_p, n_r = int(pred.sum()), int(ref.sum())
    inter = int((pred & ref).sum())
    dice = math.nan if n_p + n_r == 0 else 2 * inter / (n_p + n_r)
    ref_objs, pred_objs = components(ref, min_voxels), components(pred, min_voxels)
    matches = match_objects(ref_objs, pred_objs, overlap)
    return CaseDetection(
        case_id,
        n_r * voxel_ml,
        dice,
        n_r > 0,
        n_p > 0,
        len(ref_objs),
        len(pred_objs),
        len(matches),
        [ref_objs[i].size * voxel_ml for i, _, _ in matches],
        [o.size * voxel_ml for o in ref_objs],
        overlap,
    )


def _f1(p: float, r: float) -> float:
    return math.nan if math.isnan(p) or math.isnan(r) or p + r == 0 else 2 * p * r / (p + r)


def _div(a: float, b: float) -> float:
    return a / b if b else math.nan


def summarize(cases: Sequence[CaseDetection]) -> dict:
    """Patient-wise and object-wise metrics over ``cases``."""
    pos = [c for c in cases if c.ref_positive]
    tp = [c for c in pos if c.detected]
    fp = [c for c in cases if c.pred_positive and not c.detected]
    recall = _div(len(tp), len(pos))
    precision = _div(len(tp), len(tp) + len(fp))
    n_ref_obj = sum(c.ref_objects for c in cases)
    n_pred_obj = sum(c.pred_objects for c in cases)
    n_match = sum(c.matched for c in cases)
    o_recall, o_precision = _div(n_match, n_ref_obj), _div(n_match, n_pred_obj)
    return {
        "n_cases": len(cases),
        "n_positive": len(pos),
        "Dice": float(np.mean([c.dice for c in pos])) if pos else math.nan,
        "Dice-TP": float(np.mean([c.dice for c in tp])) if tp else math.nan,
        "patient_recall": recall,
        "patient_precision": precision,
        "patient_f1": _f1(precision, recall),
        "fp_per_patient": _div(sum(c.pred_objects - c.matched for c in cases), len(cases)),
        "object_recall": o_recall,
        "object_precision": o_precision,
        "object_f1": _f1(o_precision, o_recall),
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


def summarize_by_volume(cases: Sequence[CaseDetection], edges: Sequence[float] = (3.0,)) -> dict[str, dict]:
    """:func:`summarize` per reference-volume bin (patients without a tumour are in no bin)."""
    out = {}
    names = [bin_label(x, edges) for x in [min(edges) - 1] + list(sorted(edges))]
    for name in names:
        sel = [c for c in cases if c.ref_positive and bin_label(c.ref_ml, edges) == name]
        out[name] = summarize(sel)
    return out


def threshold_scan(
    prob_cases: Sequence[tuple[str, np.ndarray, np.ndarray, Sequence[float]]],
    thresholds: Sequence[float] = tuple(np.round(np.arange(0.1, 1.01, 0.1), 2)),
    overlap: float = DEFAULT.overlap,
    min_voxels: int = DEFAULT.min_object_voxels,
) -> tuple[float | None, list[dict]]:
    """Patient-wise metrics at each probability threshold; returns the best threshold by
    (Dice-TP + patient recall) / 2 and the table. ``prob_cases``: (case id, foreground probability,
    reference mask, spacing). A voxel is positive when its probability >= the threshold.

    Ties go to argmax: the best is ``None`` (argmax masks, what a two-class softmax gives at 0.5) unless a
    threshold scores strictly better than 0.5 does, or, without 0.5 in ``thresholds``, than every other."""
    table = []
    for t in thresholds:
        cases = [case_detection(cid, p >= t, r, sp, overlap, min_voxels) for cid, p, r, sp in prob_cases]
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
