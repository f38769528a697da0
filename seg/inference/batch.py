"""Predict a batch of cases: one small function per output, one loop that goes on past a bad case.

``predict_cases`` is what ``seg-predict`` and the k-fold out-of-fold prediction call. It checks each
case's files ahead of the network (``workers`` threads), writes every output atomically, and returns a
:class:`BatchResult` with the written cases and the failures (case id, one-line problem). Refusing to
replace existing outputs is the command's decision, not this function's (k-fold resume writes again).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np
import torch

from seg.config import check_option, pool, progress_bar
from seg.data.components import count_components
from seg.errors import one_line
from seg.inference.cases import InputCase, validate
from seg.inference.predictor import Prediction, Predictor, save_mask
from seg.io import atomic_write_bytes, on_grid_of, save_nifti, write_text

log = logging.getLogger(__name__)


class ProbabilityFormat(str, Enum):
    NONE = "none"
    NIFTI = "nifti"  # <case>_prob.nii.gz: float32, one channel per class (seg-predict --save-probabilities)
    NPZ = "npz"  # <case>_prob.npz: float16 foreground probabilities (the k-fold threshold scan, a cascade)


@dataclass
class BatchOptions:
    """What to write besides each mask.

    Args:
        probabilities: "none", "nifti" or "npz" (see :class:`ProbabilityFormat`).
        case_json: a ``<case>.json`` report per case (volumes, components, seconds per stage).
        summary_csv: ``summary.csv`` for the batch (failures included).
        overlay: a ``<case>.png`` montage per case.
        workers: threads checking the next inputs ahead of the network.
        progress: a progress bar on stderr.
    """

    probabilities: str = "none"
    case_json: bool = True
    summary_csv: bool = True
    overlay: bool = False
    workers: int = 1
    progress: bool = False
    progress_log: bool = False  # a log line per case done (logs without a terminal: k-fold's out-of-fold pass)
    keep_summary: bool = False  # add to an existing summary.csv (seg-predict --continue) instead of replacing it
    output_format: str = "nifti"  # nifti | dicom-seg | both (the SEG for DICOM cases: seg.inference.dicom)
    algorithm: tuple[str, str] = ("seg", "")  # the SEG's algorithm name and version
    expected_labels: tuple[int, ...] = ()  # labels every training case held: empty in a prediction, a warning

    def __post_init__(self) -> None:
        self.probabilities = check_option("probabilities", self.probabilities, ProbabilityFormat)


@dataclass
class BatchResult:
    written: list[dict] = field(default_factory=list)  # one summary row per written case
    failures: list[tuple[str, str]] = field(default_factory=list)  # (case id, one-line problem)
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (case id, one-line warning): predicted anyway
    output: Path | None = None


def stem(output_name: str) -> str:
    """``case.nii.gz`` / ``case.nii`` / ``case.seg.dcm`` -> ``case``."""
    return output_name.removesuffix(".seg.dcm").split(".nii")[0]


def case_report(labels_map: np.ndarray, names: Mapping[int, str], spacing: Sequence[float]) -> dict:
    """Volume (ml) and connected components (26-connected) of each foreground label."""
    voxel_ml = float(np.prod(spacing)) / 1000
    out = {}
    for i, name in names.items():
        if i == 0:
            continue
        m = labels_map == i
        n = count_components(m, connectivity=26)
        out[name] = {"label": i, "volume_ml": round(float(m.sum()) * voxel_ml, 4), "components": n}
    return out


def write_probabilities(pr: Prediction, path_stem: Path, fmt: str) -> None:
    if fmt == ProbabilityFormat.NIFTI:
        prob = np.moveaxis(pr.probabilities.numpy(), 0, -1).astype(np.float32)
        img = on_grid_of(prob, pr.reference, np.float32)
        save_nifti(img, path_stem.with_name(path_stem.name + "_prob.nii.gz"))
    elif fmt == ProbabilityFormat.NPZ:  # two classes: [*S]; more: [K-1, *S] (a cascade's next stage reads both)
        p = pr.probabilities
        fg = (p[1] if p.shape[0] == 2 else p[1:]).numpy().astype(np.float16)

        def _w(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, prob=fg)

        atomic_write_bytes(path_stem.with_name(path_stem.name + "_prob.npz"), _w)


def write_case_json(report: dict, path: Path) -> None:
    write_text(path, json.dumps(report, indent=1))


def write_overlay(pr: Prediction, path: Path, title: str, labels: dict | None = None) -> None:
    from seg.eval.overlay import overlay_montage

    img = np.asanyarray(pr.reference.dataobj).astype(np.float32)
    img = img[..., 0] if img.ndim == 4 else img
    overlay_montage(img, pr.labels, path, title, pr.reference.affine, label_names=labels)


def read_summary_csv(path: Path) -> list[dict]:
    """The rows of an earlier ``summary.csv`` (none when there is none or it cannot be read)."""
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError):
        return []


def write_summary_csv(path: Path, rows: list[dict], failures: list[tuple[str, str]], keep: list[dict] = ()) -> None:
    """``summary.csv``: this batch's rows and failures, after the rows of ``keep`` (an earlier summary's, for the
    cases this batch did not touch: ``--continue`` adds to a summary instead of replacing it)."""
    touched = {r["case"] for r in rows} | {cid for cid, _ in failures}
    rows = [r for r in keep if r.get("case") not in touched] + list(rows)
    buf = io.StringIO()
    cols = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("case", "mask"), k)) or ["case", "mask"]
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    for r in rows:
        w.writerow(r)
    for cid, problem in failures:
        w.writerow({"case": cid, "mask": f"FAILED: {problem}"})
    write_text(path, buf.getvalue())


def case_outputs(case: InputCase, options: BatchOptions) -> dict[str, str]:
    """Every file :func:`predict_one` writes for ``case`` under ``options``: name -> what it is."""
    s, out = stem(case.output_name), {}
    if not case.output_name.endswith(".seg.dcm"):
        out[case.output_name] = "mask"
    if options.probabilities != ProbabilityFormat.NONE:
        out[f"{s}_prob.{'npz' if options.probabilities == ProbabilityFormat.NPZ else 'nii.gz'}"] = "probabilities"
    if options.case_json:
        out[f"{s}.json"] = "report"
    if options.overlay:
        out[f"{s}.png"] = "overlay"
    if case.extra.get("dicom") is not None and options.output_format != "nifti":
        out[f"{case.case_id}.seg.dcm"] = "DICOM SEG"
    return out


def mark_collisions(cases: Sequence[InputCase], options: BatchOptions) -> None:
    """A case one of whose outputs another case (or the batch's summary.csv) writes too fails, named: input
    ``a_prob`` beside ``a`` would have replaced a's probabilities with its mask."""
    owner: dict[str, tuple[InputCase | None, str]] = {"summary.csv": (None, "summary")} if options.summary_csv else {}
    for c in cases:
        if c.problem is not None:
            continue
        outputs = case_outputs(c, options)
        for name, what in outputs.items():
            if name in owner:
                other, theirs = owner[name]
                whose = f"{other.case_id}'s {theirs}" if other is not None else "the batch's summary"
                c.problem = f"its {what} {name} would replace {whose}: rename the input"
                c.extra["collides"] = True  # its mask's name is another output's: nothing of it is stale
                break
        else:
            owner.update({name: (c, what) for name, what in outputs.items()})


def predict_one(
    case: InputCase, predictor: Predictor, out: Path, options: BatchOptions, labels: Mapping[int, str]
) -> dict:
    """Predict one (already validated) case and write its outputs; returns its summary row. The mask is written
    last: a mask on disk means every output of its case is whole (``--continue`` trusts exactly that)."""
    t0 = time.perf_counter()
    target = out / case.output_name
    pr = predictor.predict(case.files if len(case.files) > 1 else case.files[0])
    t_w = time.perf_counter()
    if options.probabilities != ProbabilityFormat.NONE:
        write_probabilities(pr, out / stem(case.output_name), options.probabilities)
    report = {
        "case": case.case_id,
        "inputs": case.files,
        "mask": str(target),
        "labels": case_report(pr.labels, labels, pr.reference.header.get_zooms()[:3]),
        "postprocessing": {labels.get(k, str(k)): f"{n} components removed" for k, n in pr.removed.items()},
        "seconds": {**{k: round(v, 3) for k, v in pr.seconds.items()}, "write": round(time.perf_counter() - t_w, 3)},
    }
    if options.case_json:
        write_case_json(report, out / f"{stem(case.output_name)}.json")
    if options.overlay:
        write_overlay(pr, out / f"{stem(case.output_name)}.png", case.case_id, labels)
    series = case.extra.get("dicom")
    if series is not None and options.output_format != "nifti":
        from seg.inference.dicom import write_seg

        write_seg(series, pr.labels, dict(labels), out / f"{case.case_id}.seg.dcm", options.algorithm)
    if not case.output_name.endswith(".seg.dcm"):
        save_mask(pr.labels, pr.reference, target)
    empty = [n for n, v in report["labels"].items() if v["label"] in options.expected_labels and not v["components"]]
    if empty:
        log.warning(
            "%s: %s empty, though every training case held it: check the input (another modality or contrast, "
            "a crop without the structure?)", case.case_id, ", ".join(empty),
        )  # fmt: skip
    secs = report["seconds"]
    post = "; ".join(f"{k} {v}" for k, v in report["postprocessing"].items())
    log.info(
        "%s: %s (%.1f s: %s)%s",
        case.case_id,
        target.name,
        time.perf_counter() - t0,
        ", ".join(f"{k} {v:.2f}" for k, v in secs.items()),
        f"; postprocessed: {post}" if post else "",
    )
    return {
        "case": case.case_id,
        "mask": target.name,
        **{f"{n}_ml": v["volume_ml"] for n, v in report["labels"].items()},
        **{f"{n}_components": v["components"] for n, v in report["labels"].items()},
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _drop_stale(out: Path, case: InputCase) -> str:
    """A failed case's mask left by an earlier run (``--overwrite`` re-predicts over it) is another scan's or
    another model's: removed, so that ``--continue`` does not take it for this run's."""
    stale = out / case.output_name
    if case.extra.get("collides") or not stale.is_file() or stale.resolve() in {Path(f).resolve() for f in case.files}:
        return ""
    stale.unlink()
    return f" (the earlier {stale.name} removed: it was not this run's)"


def predict_cases(
    cases: Sequence[InputCase],
    predictor: Predictor,
    out: str | Path,
    options: BatchOptions | None = None,
    labels: Mapping[int, str] | None = None,
) -> BatchResult:
    """Predict ``cases`` into the folder ``out``; one bad case is reported and the others go on.

    Args:
        cases: from :func:`seg.inference.cases.discover` (or built by the caller).
        predictor: the configured :class:`Predictor`.
        out: output folder (made if missing).
        options: what to write besides the masks.
        labels: label id -> name for the reports (default: the predictor's ids as names).
    """
    options = options or BatchOptions()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labels = dict(labels) if labels is not None else {i: str(i) for i in predictor.label_ids}
    inputs = {str(Path(f).resolve()) for c in cases for f in c.files}
    mark_collisions(cases, options)
    result = BatchResult(output=out)
    progress, task = progress_bar("predicting", len(cases)) if options.progress else (None, None)
    try:
        with pool(options.workers) as workers:
            checks = [workers.submit(validate, c) for c in cases]  # read-ahead: inputs checked while predicting
            for c, check in zip(cases, checks):
                problem, warnings = check.result()
                for w in warnings:
                    log.warning("%s", w)
                    result.warnings.append((c.case_id, w))
                if problem is None and str((out / c.output_name).resolve()) in inputs:
                    problem = f"output {out / c.output_name} would overwrite an input"
                if problem is None:
                    try:
                        result.written.append(predict_one(c, predictor, out, options, labels))
                    except torch.cuda.OutOfMemoryError as e:
                        problem = f"out of memory ({one_line(e, 200)})"
                    except Exception as e:  # one bad case must not stop the batch
                        problem = one_line(e)
                if problem is not None:
                    problem += _drop_stale(out, c)
                    result.failures.append((c.case_id, problem))
                    log.error("%s: %s", c.extra.get("source", c.files[0]), problem)
                if progress is not None:
                    progress.advance(task)
                if options.progress_log:
                    done = len(result.written) + len(result.failures)
                    log.info("%d/%d %s %s", done, len(cases), c.case_id, "failed" if problem else "written")
    finally:
        if progress is not None:
            progress.stop()
    if options.summary_csv:
        keep = read_summary_csv(out / "summary.csv") if options.keep_summary else []
        try:
            write_summary_csv(out / "summary.csv", result.written, result.failures, keep)
        except OSError as e:  # a full disk after all the work: the masks are written, the summary is not
            result.failures.append(("summary.csv", f"{out / 'summary.csv'}: not written ({e.strerror or e})"))
            log.error("%s: summary.csv not written (%s)", out, e.strerror or e)
    return result
