"""Evaluate a folder of predicted label maps against a folder of reference label maps.

Writes ``summary.json`` in the shape of nnU-Net's (``metric_per_case`` entries with ``prediction_file``,
``reference_file`` and per-label ``metrics``; ``mean`` per label; ``foreground_mean``) plus the paper's
detection metrics per label (patient- and object-wise, overall and per volume bin).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from seg.config import pool
from seg.data.datalist import case_id_from_path
from seg.errors import SegError
from seg.eval.detection import (
    DEFAULT,
    DetectionParams,
    case_detection,
    data_bins,
    summarize,
    summarize_by_volume,
)
from seg.eval.metrics import case_metrics
from seg.io import GRID_TOL, NiftiError, check_writable, read_nifti, write_text

log = logging.getLogger(__name__)


class EvalError(SegError, ValueError):
    pass


def _nifti_files(folder: Path) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """Case id -> file of a folder's NIfTI files (hidden files, seg's own temporaries among them, are none), and
    the case ids that two files give (``case.nii`` beside ``case.nii.gz``): those are not guessed between."""
    by_id: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        if p.name.endswith((".nii.gz", ".nii")) and not p.name.startswith(".") and p.is_file():
            by_id.setdefault(case_id_from_path(p), []).append(p)
    files = {cid: ps[0] for cid, ps in by_id.items() if len(ps) == 1}
    return files, {cid: ps for cid, ps in by_id.items() if len(ps) > 1}


MAX_LABELS = 255  # a label map holds at most this many distinct ids (uint8's range); more is an image given as one


def label_map(data: np.ndarray, path: str | Path, role: str) -> tuple[np.ndarray, list[int]]:
    """``data`` as integer label ids and the ids it holds, or an :class:`EvalError` naming ``path``: NaN or
    infinite values, values off the integers (a soft map: rounding it would score a guess), negative ids, or
    more distinct ids than :data:`MAX_LABELS` (an image given as a label map)."""
    a = np.squeeze(np.asarray(data))
    if a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise EvalError(f"{path}: the {role} holds NaN or infinite values: not a label map")
        r = np.rint(a)
        off = np.abs(a - r) > 1e-3
        if off.any():
            raise EvalError(
                f"{path}: the {role} holds values between labels (e.g. {a[off].flat[0]:.3g}): a label map holds "
                "integer ids (threshold soft predictions first)"
            )
        a = r
    a = a.astype(np.int64)
    ids = np.unique(a)
    if ids.size and ids[0] < 0:
        raise EvalError(f"{path}: the {role} holds a negative label id ({ids[0]}): not a label map")
    if ids.size > MAX_LABELS:
        raise EvalError(f"{path}: the {role} holds {ids.size} distinct values: not a label map (an image?)")
    return a, ids.tolist()


def evaluate_case(
    pred_path: str,
    ref_path: str,
    labels: Mapping[int, str],
    surface: bool = True,
    tolerance_mm: float = 2.0,
    overlap: float = DEFAULT.overlap,
    min_voxels: int = DEFAULT.min_object_voxels,
    matching: str = DEFAULT.matching,
) -> dict:
    """All metrics of one case; raises :class:`EvalError` naming the file on a grid mismatch."""
    try:
        pred, ref = read_nifti(pred_path), read_nifti(ref_path)
    except NiftiError as e:
        raise EvalError(f"{pred_path} / {ref_path}: {e}") from None
    (p, p_ids), (r, _) = label_map(pred.data, pred_path, "prediction"), label_map(ref.data, ref_path, "reference")
    if p.shape != r.shape:
        raise EvalError(f"{pred_path}: shape {list(p.shape)} differs from the reference's {list(r.shape)} ({ref_path})")
    if not np.allclose(pred.affine, ref.affine, atol=GRID_TOL):
        raise EvalError(f"{pred_path}: affine differs from the reference's ({ref_path})")
    spacing = [float(x) for x in ref.header.get_zooms()[:3]]
    undeclared = sorted(set(p_ids) - set(labels))
    metrics = case_metrics(p, r, spacing, labels, surface, tolerance_mm)
    detection = {}
    for i in sorted(labels):
        if i:
            d = case_detection(case_id_from_path(ref_path), p == i, r == i, spacing, overlap, min_voxels, matching)
            detection[str(i)] = d
    out = {
        "prediction_file": str(pred_path),
        "reference_file": str(ref_path),
        "metrics": metrics,
        "_detection": detection,
    }
    if undeclared:  # label ids the dataset does not declare: not scored under any label, so reported
        out["undeclared_labels"] = [int(i) for i in undeclared]
    return out


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    v = [x for x in values if x is not None and not math.isnan(x) and not math.isinf(x)]
    if not v:
        return math.nan, math.nan
    return float(np.mean(v)), float(np.std(v))


def aggregate(per_case: list[dict], labels: Mapping[int, str], bins: Sequence[float] | None = None) -> dict:
    """Means (and standard deviations) per label, foreground mean, detection summaries; the volume ``bins``
    (ml edges) are each label's own (:func:`seg.eval.detection.data_bins`) unless given."""
    keys = [str(i) for i in sorted(labels) if i]
    metric_names = sorted({m for c in per_case for k in keys for m in c["metrics"].get(k, {})})
    mean, std = {}, {}
    for k in keys:
        mean[k], std[k] = {}, {}
        for m in metric_names:
            mean[k][m], std[k][m] = mean_std([c["metrics"][k].get(m) for c in per_case])
        ms = [c["metrics"][k] for c in per_case if k in c["metrics"]]
        # cases whose reference has the structure and the prediction none, and the other way round
        mean[k]["n_missed"] = sum(1 for m in ms if m.get("n_ref", 0) > 0 and m.get("n_pred", 0) == 0)
        mean[k]["n_spurious"] = sum(1 for m in ms if m.get("n_pred", 0) > 0 and m.get("n_ref", 0) == 0)
    fg = {m: mean_std([mean[k][m] for k in keys])[0] for m in metric_names}
    fg.update({n: sum(mean[k][n] for k in keys) for n in ("n_missed", "n_spurious")})
    detection = {}
    for k in keys:
        dets = [c["_detection"][k] for c in per_case]
        edges = list(bins) if bins else data_bins(dets)
        detection[k] = {"overall": summarize(dets), "bins_ml": edges, "by_volume": summarize_by_volume(dets, edges)}
    return {"mean": mean, "std": std, "foreground_mean": fg, "detection": detection}


def json_safe(x):
    """JSON-safe: NaN/inf -> None."""
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [json_safe(v) for v in x]
    return x


def _check_summary_target(path: Path) -> None:
    """``summary.json`` replaces only an earlier seg-eval summary (a case named ``summary`` has its report there)."""
    if not path.exists():
        return
    try:
        ours = "metric_per_case" in json.loads(path.read_text())
    except (OSError, ValueError, TypeError):
        ours = False
    if not ours:
        raise EvalError(f"{path}: exists and is not a seg-eval summary (a case's report?): give -o another folder")


def evaluate_folders(
    pred_dir: str | Path,
    label_dir: str | Path,
    labels: Mapping[int, str] | None = None,
    output: str | Path | None = None,
    surface: bool = True,
    tolerance_mm: float = 2.0,
    bins: Sequence[float] | None = None,
    workers: int | None = None,
    matching: str = DEFAULT.matching,
) -> dict:
    """Evaluate every prediction in ``pred_dir`` that has a reference of the same name in ``label_dir``."""
    pred_dir, label_dir = Path(pred_dir), Path(label_dir)
    for d in (pred_dir, label_dir):
        if not d.is_dir():
            raise EvalError(f"{d}: folder does not exist")
    if output:
        check_writable(output, "output folder (-o)")
        _check_summary_target(Path(output) / "summary.json")
    (preds, pred_dups), (refs, ref_dups) = _nifti_files(pred_dir), _nifti_files(label_dir)
    dups = [
        {
            "case": cid,
            "problem": f"case id {cid!r} is given by {len(ps)} files ({', '.join(p.name for p in ps)}): "
            "rename or remove one",
        }
        for cid, ps in sorted({**ref_dups, **pred_dups}.items())
    ]
    preds = {c: p for c, p in preds.items() if c not in ref_dups}
    common = sorted(set(preds) & set(refs))
    if not common and not dups:
        raise EvalError(f"{pred_dir}: no prediction has a reference of the same name in {label_dir}")
    missing = sorted(set(refs) - set(preds) - {d["case"] for d in dups})
    if missing:
        log.warning("%d references have no prediction (not evaluated): %s", len(missing), ", ".join(missing[:10]))
    unmatched = sorted(set(preds) - set(refs))
    if labels is None:
        ids = set()
        for c in common:  # a reference that is no label map adds none (its case is reported bad below)
            try:
                ids |= set(label_map(read_nifti(refs[c]).data, refs[c], "reference")[1])
            except (EvalError, NiftiError):
                continue
        labels = {i: str(i) for i in sorted(ids | {0})}
    workers = workers or min(4, os.cpu_count() or 1)
    matching = DetectionParams(matching=matching).matching  # an unknown mode: one line before any case

    def one(c):  # a bad case (wrong grid, unreadable) is reported; the others are still evaluated
        try:
            return evaluate_case(str(preds[c]), str(refs[c]), labels, surface, tolerance_mm, matching=matching)
        except EvalError as e:
            return {"_bad": str(e)}

    with pool(workers) as threads:
        results = list(threads.map(one, common))
    bad = dups + [{"case": c, "problem": r["_bad"]} for c, r in zip(common, results) if "_bad" in r]
    per_case = [r for r in results if "_bad" not in r]
    if not per_case:
        raise EvalError(f"{pred_dir}: no prediction could be evaluated ({bad[0]['problem']})")
    summary = aggregate(per_case, labels, bins)
    summary["bad_cases"] = bad
    summary["missing_cases"] = missing
    summary["unmatched_predictions"] = unmatched
    summary["undeclared_labels"] = {
        case_id_from_path(c["prediction_file"]): c["undeclared_labels"] for c in per_case if c.get("undeclared_labels")
    }
    summary["labels"] = {str(k): v for k, v in labels.items()}
    summary["metric_per_case"] = [{k: v for k, v in c.items() if k != "_detection"} for c in per_case]
    summary = json_safe(summary)
    if output:
        try:
            write_text(Path(output) / "summary.json", json.dumps(summary, indent=1))
        except OSError as e:  # a full disk after the scoring: one line naming the file, nothing half-written
            raise EvalError(f"{Path(output) / 'summary.json'}: cannot be written ({e.strerror or e})") from None
    return summary
