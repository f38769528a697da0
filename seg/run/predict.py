"""The prediction runner behind ``seg-predict``: ``predict(request) -> PredictRun``.

Everything is checked before the first case is predicted (the paths, the output folder, the bundle, the
folds, the device, the engine, bf16's agreement), so a refusal costs nothing and writes nothing; then
:func:`seg.inference.batch.predict_cases` predicts every case, going on past a bad one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from seg.inference.agreement import check_bf16
from seg.inference.batch import BatchOptions, BatchResult, predict_cases
from seg.inference.bundle import load_bundle
from seg.inference.cases import discover
from seg.inference.engines import check_engine
from seg.inference.options import (
    check_output_folder,
    check_paths,
    existing_outputs,
    operating_point,
    parse_folds,
    resolve_device,
)
from seg.io import FolderLock

log = logging.getLogger("seg.predict")


@dataclass
class PredictRequest:
    """seg-predict's options (see ``seg-predict --help``)."""

    input: str
    output: str
    model: str
    engine: str = "torch"
    precision: str = "fp32"
    folds: str = "all"
    device: str = "auto"
    tta: bool = False
    overlap: float | None = None
    threshold: float | str | None = None
    save_probabilities: bool = False
    png: bool = False
    workers: int = 1
    overwrite: bool = False
    resume: bool = False
    progress: bool = True
    checkpoint: str | None = None  # final | best; None: the bundle's default (final unless its k-fold chose best)
    postprocess: bool = True  # the bundle's postprocessing (--no-postprocessing: off)


@dataclass
class PredictRun:
    """A checked request, ready to predict: what :func:`run` needs, and the lines to print first."""

    request: PredictRequest
    cases: list
    predictor: object
    bundle: object
    output: Path
    notes: list[str]


def tta_note(axes: list[int], unrecorded: bool) -> str:
    """What --tta averages: the mirrorings of the axes the model was trained mirrored (nnU-Net's rule)."""
    if not axes:
        return (
            "TTA: nothing to average: the model was trained without mirroring (its augmentation mirrors no axis) "
            "and would read mirrored structures as others; predicting without it"
        )
    why = "the bundle records none: all three, as before" if unrecorded else "the axes its training mirrored"
    return f"TTA: the mean over {2 ** len(axes)} mirrorings of axes {axes} ({why})"


def prepare(r: PredictRequest) -> PredictRun:
    """Every check before any case is predicted; a problem is a one-line :class:`~seg.errors.SegError`."""
    inp, out = check_paths(r.input, r.output)
    check_output_folder(out)
    bundle = load_bundle(r.model)
    folds = parse_folds(r.folds, bundle.folds)
    device = resolve_device(r.device)
    check_engine(r.engine, device, r.precision)
    cases = discover(inp, bundle.meta.in_channels)
    if not cases:
        raise FileNotFoundError(f"{inp}: no NIfTI files (.nii, .nii.gz) found")
    cases = existing_outputs(cases, out, r.overwrite, r.resume)
    checkpoint = r.checkpoint or str(bundle.meta.extra.get("checkpoint") or "final")
    predictor = bundle.predictor(
        folds, device, r.tta, r.overlap, r.threshold, r.engine, r.precision, checkpoint, r.postprocess
    )
    notes = []
    if r.precision == "bf16":
        notes.append(check_bf16(predictor, r.model, cases))
    notes.append(f"operating point: {operating_point(bundle.labels, predictor.threshold, r.threshold)}")
    if r.tta:
        notes.append(tta_note(predictor.mirror_axes, bundle.meta.mirror_axes is None))
    if bundle.meta.postprocessing:
        what = predictor.postprocessing.describe(bundle.labels) if r.postprocess else "off (--no-postprocessing)"
        notes.append(f"postprocessing: {what} (chosen by the bundle's k-fold on its out-of-fold predictions)")
    log.info(
        "%d cases, model %s (%s, folds %s) on %s, %s %s%s",
        len(cases),
        r.model,
        bundle.meta.net_name,
        folds,
        device,
        r.engine,
        r.precision,
        " TTA" * r.tta,
    )
    return PredictRun(r, cases, predictor, bundle, out, [n for n in notes if n])


def run(p: PredictRun) -> BatchResult:
    """Predict every case of a prepared run into its output folder, which it holds locked: a second seg-predict
    into the same folder stops before writing (and so does one that finds masks a run wrote meanwhile)."""
    r = p.request
    probs = "nifti" if r.save_probabilities else "none"
    opts = BatchOptions(
        probabilities=probs, overlay=r.png, workers=r.workers, progress=r.progress, keep_summary=r.resume
    )
    with FolderLock(p.output, "seg-predict"):
        cases = existing_outputs(p.cases, p.output, r.overwrite, r.resume)
        return predict_cases(cases, p.predictor, p.output, opts, p.bundle.labels)
