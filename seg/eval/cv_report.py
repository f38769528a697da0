"""Evaluation of a CV run's out-of-fold predictions and its reports.

``cv_summary.json`` follows nnU-Net's ``summary.json`` (``metric_per_case`` with ``prediction_file``,
``reference_file`` and per-label ``metrics``; ``mean``; ``foreground_mean``) and adds ``fold`` to each
case, ``per_fold`` means, the paper's detection metrics (overall and per volume bin) and the threshold
scan. ``results.csv`` has one row per case and label; ``report.md`` the paper's table; ``figures/`` PNGs.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path

import numpy as np

from seg.eval.detection import FALLBACK_BIN_ML, DetectionParams, threshold_scan
from seg.eval.evaluate import aggregate, evaluate_case, json_safe, mean_std
from seg.io import atomic_write_bytes, read_nifti, write_text

log = logging.getLogger(__name__)


def evaluate_cv(run_dir: Path, spec, folds: list[int], cv, trained: dict | None = None) -> dict:
    by_id = spec.by_id()
    labels = spec.labels
    det = DetectionParams.from_mapping(cv)
    per_case, prob_cases = [], []
    for k in folds:
        vdir = run_dir / f"fold_{k}" / "validation"
        for cid in json.loads((run_dir / f"fold_{k}" / "done.json").read_text())["val_cases"]:
            c = evaluate_case(
                str(vdir / f"{cid}.nii.gz"),
                by_id[cid].label,
                labels,
                bool(cv.get("surface_metrics", True)),
                float(cv.get("tolerance_mm", 2.0)),
                det.overlap,
                det.min_object_voxels,
                det.matching,
            )
            c["fold"] = k
            c["case_id"] = cid
            per_case.append(c)
            prob = vdir / f"{cid}_prob.npz"
            if prob.exists() and len(labels) == 2:
                import nibabel as nib

                ref = nib.load(by_id[cid].label)
                prob_cases.append(
                    (
                        cid,
                        np.load(prob)["prob"].astype(np.float32),
                        np.asanyarray(ref.dataobj) > 0,
                        ref.header.get_zooms()[:3],
                    )
                )
    bins = cv.get("volume_bins")  # None: each label's own (seg.eval.detection.data_bins)
    summary = aggregate(per_case, labels, bins)
    summary["labels"] = {str(k): v for k, v in labels.items()}
    summary["per_fold"] = {}
    for k in folds:
        sel = [c for c in per_case if c["fold"] == k]
        summary["per_fold"][str(k)] = {
            "n": len(sel),
            **{kk: vv for kk, vv in aggregate(sel, labels, bins).items() if kk in ("mean", "foreground_mean")},
        }
    fold_dice = [summary["per_fold"][str(k)]["foreground_mean"].get("Dice") for k in folds]
    summary["fold_dice_mean"], summary["fold_dice_std"] = mean_std(fold_dice)
    summary["threshold"] = None
    if prob_cases:
        best, table = threshold_scan(
            prob_cases, overlap=det.overlap, min_voxels=det.min_object_voxels, matching=det.matching
        )
        summary["threshold"], summary["threshold_scan"] = best, table
    if cv.get("postprocessing", True):
        summary["postprocessing"] = _postprocessing(per_case, labels)
    summary["metric_per_case"] = [{k: v for k, v in c.items() if k != "_detection"} for c in per_case]
    if trained:
        summary["trained"] = trained
    summary = json_safe(summary)
    write_text(run_dir / "cv_summary.json", json.dumps(summary, indent=1))
    write_results_csv(run_dir / "results.csv", summary)
    figures = write_figures(run_dir / "figures", summary, per_case, by_id, int(cv.get("worst_cases", 3)))
    write_text(run_dir / "report.md", report_markdown(summary, figures))
    return summary


def _postprocessing(per_case: list[dict], labels) -> dict:
    """The postprocessing decision on the out-of-fold predictions (seg.eval.postprocess), as the summary holds
    it: the adopted rules (what the bundle records) and the report (mean Dice per label without and with)."""
    from seg.eval.postprocess import decide

    maps = []
    for c in per_case:
        p, r = read_nifti(c["prediction_file"]), read_nifti(c["reference_file"])
        spacing = [float(z) for z in r.header.get_zooms()[:3]]
        pred, ref = (np.rint(np.squeeze(v.data)).astype(np.int64) for v in (p, r))
        maps.append((pred, ref, spacing))
    pp, report = decide(maps, labels)
    return {"rules": {str(k): v for k, v in pp.as_dict().items()}, "report": report}


def write_results_csv(path: Path, summary: dict) -> None:
    names = ["Dice", "IoU", "HD95", "ASD", "SurfaceDice", "ref_ml", "pred_ml"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["fold", "case", "label", *names])
    for c in summary["metric_per_case"]:
        for lab, m in c["metrics"].items():
            w.writerow([c["fold"], c["case_id"], summary["labels"][lab], *[m.get(n) for n in names]])
    write_text(path, buf.getvalue())


def _fmt(x, pct: bool = True) -> str:  # pct: a fraction 0-1 (4 decimals); else mm (2)
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.4f}" if pct else f"{x:.2f}"  # fractions 0-1 (Dice, recall, ...), as every seg output; mm


def _trained_markdown(record: dict | None) -> list[str]:
    """report.md's section (none for a summary without a record)."""
    if not record:
        return []
    made = ", ".join(str(s) for s in record["steps_made"]) or "-"
    planned = f"; the plan forecast {record['steps_planned']} a run" if record.get("steps_planned") else ""
    return [
        "## What was trained",
        "",
        f"seg {record['seg_version']}; plan `{record['plan'] or '-'}`; net `{record['net']}` filters "
        f"{record.get('filters')}; budget {record.get('budget') or 'epochs'} per run, {record['members']} member(s); "
        f"optimiser steps made per fold: {made}{planned}.",
        "",
    ]


def report_markdown(s: dict, figures: list[str]) -> str:
    lines = [
        "# Cross-validation report",
        "",
        f"{len(s['metric_per_case'])} out-of-fold cases in {len(s['per_fold'])} folds; "
        f"fold-mean foreground Dice {_fmt(s.get('fold_dice_mean'))} +- {_fmt(s.get('fold_dice_std'))} (sd over folds).",
        "",
        *_trained_markdown(s.get("trained")),
    ]
    scan = s.get("threshold_scan") or []
    if scan:
        thr = s.get("threshold")
        lines += [
            "## Operating point (foreground probability threshold, out-of-fold cases)",
            "",
            "Scored by (Dice-TP + patient recall)/2 at thresholds 0.1..1.0; ties with 0.5 (= argmax) go to argmax. "
            + (
                f"Chosen: **{thr:.1f}**, written into the bundle: `seg-predict` applies it by default "
                "(`--threshold argmax` to not). Only this table uses thresholded masks."
                if thr is not None
                else "Chosen: **argmax** (no threshold beat 0.5): the bundle has no threshold."
            ),
            "",
            "| threshold | score | Dice-TP | P-recall | P-precision | |",
            "|---|---|---|---|---|---|",
        ]
        for r in scan:
            mark = "chosen" if thr is not None and abs(r["threshold"] - thr) < 1e-9 else ""
            lines.append(
                f"| {r['threshold']:.1f} | {r['score']:.3f} | {_fmt(r['Dice-TP'])} | {_fmt(r['patient_recall'])} | "
                f"{_fmt(r['patient_precision'])} | {mark} |"
            )
        lines.append("")
    pp = s.get("postprocessing")
    if pp:
        lines += [
            "## Postprocessing (decided on the out-of-fold predictions; seg-predict applies it)",
            "",
            "| label | Dice without | with | choice |",
            "|---|---|---|---|",
        ]
        for r in pp["report"].values():
            lines.append(f"| {r['name']} | {_fmt(r['dice_without'])} | {_fmt(r['dice_with'])} | {r['choice']} |")
        lines.append("")
    lines += ["Every other table uses the argmax masks as predicted (no threshold, no postprocessing).", ""]
    lines += [
        "## Detection (the paper's form; docs/metrics.md)",
        "",
        "| label | bin | cases | Dice | Dice-TP | P-recall | P-precision | P-F1 | O-recall | O-precision | O-F1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for lab, d in s["detection"].items():
        rows = [("all", d["overall"])] + list(d["by_volume"].items())
        for b, r in rows:
            lines.append(
                f"| {s['labels'][lab]} | {b} | {r['n_positive']} | {_fmt(r['Dice'])} | {_fmt(r['Dice-TP'])} | "
                f"{_fmt(r['patient_recall'])} | {_fmt(r['patient_precision'])} | {_fmt(r['patient_f1'])} | "
                f"{_fmt(r['object_recall'])} | {_fmt(r['object_precision'])} | {_fmt(r['object_f1'])} |"
            )
    lines += [
        "",
        "## Per label (mean +- std over cases; a missed or spurious structure counts HD95 = ASD = the image's"
        " diagonal in mm)",
        "",
        "| label | Dice | HD95 mm | ASD mm | surface Dice | missed | spurious |",
        "|---|---|---|---|---|---|---|",
    ]
    for lab, m in s["mean"].items():
        sd = s["std"][lab]
        lines.append(
            f"| {s['labels'][lab]} | {_fmt(m.get('Dice'))} +- {_fmt(sd.get('Dice'))} | {_fmt(m.get('HD95'), False)} +- "
            f"{_fmt(sd.get('HD95'), False)} | {_fmt(m.get('ASD'), False)} | {_fmt(m.get('SurfaceDice'))} | "
            f"{m.get('n_missed', '-')} | {m.get('n_spurious', '-')} |"
        )
    lines += ["", "## Per fold (foreground mean Dice)", "", "| fold | cases | Dice |", "|---|---|---|"]
    for k, f in s["per_fold"].items():
        lines.append(f"| {k} | {f['n']} | {_fmt(f['foreground_mean'].get('Dice'))} |")
    if figures:
        lines += ["", "## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures]
    return "\n".join(lines) + "\n"


def _save_fig(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")  # ~600 px wide: readable at report size
    atomic_write_bytes(path, lambda tmp: Path(tmp).write_bytes(buf.getvalue()))


def write_figures(fig_dir: Path, s: dict, per_case: list[dict], by_id: dict, worst: int) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib

    out = []
    labs = list(s["labels"])[1:]
    # Dice against label volume, the first label's smallest volume bin marked
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for lab in labs:
        pts = [
            (c["metrics"][lab]["ref_ml"], c["metrics"][lab]["Dice"])
            for c in per_case
            if c["metrics"][lab]["ref_ml"] > 0 and not math.isnan(c["metrics"][lab]["Dice"])
        ]
        if pts:
            ax.scatter(*zip(*pts), s=12, label=s["labels"][lab])
    edge = min(s["detection"][labs[0]]["bins_ml"]) if labs else FALLBACK_BIN_ML
    ax.axvspan(0, edge, color="grey", alpha=0.15, label=f"< {edge:g} ml")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("reference volume (ml, symlog)")
    ax.set_ylabel("Dice (0-1)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("out-of-fold Dice against label volume", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save_fig(fig, fig_dir / "dice_vs_volume.png")
    plt.close(fig)
    out.append("figures/dice_vs_volume.png")
    # per-fold box plots
    folds = sorted({c["fold"] for c in per_case})
    fig, ax = plt.subplots(figsize=(5, 3.5))
    data = [
        [np.nanmean([c["metrics"][lab]["Dice"] for lab in labs]) for c in per_case if c["fold"] == k] for k in folds
    ]
    ax.boxplot([[v for v in d if not math.isnan(v)] or [0] for d in data], tick_labels=[str(k) for k in folds])
    ax.set_xlabel("fold")
    ax.set_ylabel("foreground Dice per case (0-1)")
    ax.set_ylim(0, 1)  # fixed: folds and runs compare at a glance
    ax.set_title(f"out-of-fold Dice per fold ({len(per_case)} cases)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    _save_fig(fig, fig_dir / "dice_per_fold.png")
    plt.close(fig)
    out.append("figures/dice_per_fold.png")
    # overlays of the worst cases (lowest mean foreground Dice among cases with a label)
    from seg.eval.overlay import overlay_montage

    scored = [
        (np.nanmean([c["metrics"][lab]["Dice"] for lab in labs]), c)
        for c in per_case
        if any(c["metrics"][lab]["ref_ml"] > 0 for lab in labs)
    ]
    scored = [x for x in scored if not math.isnan(x[0])]
    for dice, c in sorted(scored, key=lambda x: x[0])[:worst]:
        nii = nib.load(by_id[c["case_id"]].images[0])
        img = np.asanyarray(nii.dataobj).astype(np.float32)
        img = img[..., 0] if img.ndim == 4 else img
        ref = np.asanyarray(nib.load(c["reference_file"]).dataobj)
        pred = np.asanyarray(nib.load(c["prediction_file"]).dataobj)
        name = f"figures/worst_{c['case_id']}.png"
        overlay_montage(
            img,
            pred,
            fig_dir.parent / name,
            f"{c['case_id']} (fold {c['fold']}): foreground Dice {dice:.3f}",
            nii.affine,
            reference=ref,
            label_names={int(k): v for k, v in s["labels"].items()},
        )
        out.append(name)
    return out
