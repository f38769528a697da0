"""Which postprocessing helps, decided on the out-of-fold predictions, as nnU-Net's find_best_configuration
does it: per foreground label, the mean Dice of the out-of-fold cases as predicted, with only the largest
component kept, and with the components under a volume removed (volumes tried: 1/4, 1/2 and 1x the
smallest reference component of that label among those cases). The best is adopted when it raises the
label's mean Dice by more than ``MIN_GAIN``; otherwise the label is left as predicted (off when it does not
help). Dice conventions as ``seg.eval.metrics``: a case whose reference and prediction are both empty is
left out of the mean, one empty against the other scores 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from seg.data.components import component_sizes, label_components
from seg.data.postprocess import Postprocessing

MIN_GAIN = 1e-4  # a candidate must raise a label's mean out-of-fold Dice by more than this to be adopted
MIN_ML_FACTORS = (0.25, 0.5, 1.0)  # of the smallest reference component: the min_ml volumes tried


def _dice(pred: np.ndarray, ref: np.ndarray) -> float:
    n = int(pred.sum()) + int(ref.sum())
    return math.nan if n == 0 else 2.0 * int((pred & ref).sum()) / n


def _mean(values: list[float]) -> float:
    v = [x for x in values if not math.isnan(x)]
    return float(np.mean(v)) if v else math.nan


def _smallest_ref_ml(cases, label: int) -> float | None:
    smallest = None
    for _, ref, spacing in cases:
        lab, n = label_components(ref == label, 26)
        if n:
            ml = float(component_sizes(lab, n).min()) * float(np.prod(spacing)) / 1000.0
            smallest = ml if smallest is None else min(smallest, ml)
    return smallest


def decide(
    cases: Sequence[tuple[np.ndarray, np.ndarray, Sequence[float]]], labels: Mapping[int, str]
) -> tuple[Postprocessing, dict]:
    """The postprocessing to adopt from ``(prediction, reference, spacing)`` label maps of out-of-fold cases,
    and the report: per label, the mean Dice without it, with each candidate, and the choice."""
    rules: dict[int, dict] = {}
    report: dict[str, dict] = {}
    for label in sorted(i for i in labels if i != 0):
        base = _mean([_dice(p == label, r == label) for p, r, _ in cases])
        candidates: list[dict] = [{"op": "largest"}]
        smallest = _smallest_ref_ml(cases, label)
        if smallest:
            candidates += [{"op": "min_ml", "ml": round(f * smallest, 4)} for f in MIN_ML_FACTORS]
        scores = {}
        for rule in candidates:
            pp = Postprocessing({label: rule})
            scores[_name(rule)] = _mean([_dice(pp.apply(p, sp)[0] == label, r == label) for p, r, sp in cases])
        best = max(candidates, key=lambda r: -math.inf if math.isnan(scores[_name(r)]) else scores[_name(r)])
        gain = scores[_name(best)] - base if not math.isnan(base) else -math.inf
        if gain > MIN_GAIN:
            rules[label] = best
        report[str(label)] = {
            "name": labels[label],
            "dice_without": base,
            "candidates": scores,
            "choice": _name(best) if gain > MIN_GAIN else "none",
            "dice_with": scores[_name(best)] if gain > MIN_GAIN else base,
        }
    return Postprocessing(rules), report


def _name(rule: Mapping) -> str:
    return "largest component" if rule["op"] == "largest" else f"remove < {rule['ml']:g} ml"
