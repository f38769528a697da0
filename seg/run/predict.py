"""The prediction runner behind ``seg-predict``: ``predict(request) -> PredictRun``.

Everything is checked before the first case is predicted (the paths, the output folder, the bundle, the
folds, the device, the engine, bf16's agreement), so a refusal costs nothing and writes nothing; then
:func:`seg.inference.batch.predict_cases` predicts every case, going on past a bad one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from seg.config import Precision, UserError, bf16_supported
from seg.inference.agreement import (
    MIN_AGREEMENT,
    agreement_line,
    check_bf16,
    disagreement,
    first_case_agreement,
)
from seg.inference.batch import BatchOptions, BatchResult, case_outputs, predict_cases
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
from seg.run.learned import LEARNED_NOTHING_DICE

log = logging.getLogger("seg.predict")


@dataclass
class PredictRequest:
    """seg-predict's options (see ``seg-predict --help``)."""

    input: str
    output: str
    model: str
    engine: str = "torch"
    precision: str = "auto"  # auto | fp32 | bf16 (see choose_precision)
    folds: str = "all"
    device: str = "auto"
    tta: bool = False
    overlap: float | None = None
    threshold: float | str | None = None
    save_probabilities: bool = False
    output_format: str = "nifti"  # nifti | dicom-seg | both (DICOM input only: a DICOM SEG per series)
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


def choose_precision(asked: str, trained: str | None, engine: str, device: str) -> tuple[str, str]:
    """``(precision, why)``: ``fp32``/``bf16`` as asked; ``auto`` takes bf16 only where the bundle trained in
    bf16 (``extra.precision``), the engine is torch and the device runs bf16 natively, else fp32."""
    if asked != "auto":
        return Precision.parse(asked, "--precision").value, "asked"
    if trained != "bf16" or engine != "torch" or not bf16_supported(device):
        return "fp32", ""
    return "bf16", "auto"


def bf16_note(predictor, model: str, cases, why: str) -> str | None:
    """The bf16 check's line. Asked for (``--precision bf16``), a failed check refuses the run; chosen by
    ``auto``, it falls back to fp32 and says so."""
    if why != "auto":
        return check_bf16(predictor, model, cases)  # refuses below the line
    checked = first_case_agreement(predictor, cases)
    if checked is None:
        return None
    if checked[0] < MIN_AGREEMENT:
        predictor.precision = "fp32"
        return f"precision: fp32, though the model trained in bf16: {disagreement(*checked)}"
    return f"precision: bf16, as the model trained (--precision fp32 turns it off); {agreement_line(*checked)}"


def prepare(r: PredictRequest) -> PredictRun:
    """Every check before any case is predicted; a problem is a one-line :class:`~seg.errors.SegError`."""
    inp, out = check_paths(r.input, r.output)
    check_output_folder(out)
    bundle = load_bundle(r.model)
    folds = parse_folds(r.folds, bundle.folds)
    device = resolve_device(r.device)
    precision, why = choose_precision(r.precision, bundle.meta.extra.get("precision"), r.engine, device)
    check_engine(r.engine, device, precision)
    cases = discover(inp, bundle.meta.in_channels, r.output_format)
    if r.output_format != "nifti" and not any("dicom" in c.extra for c in cases):
        raise UserError(f"{inp}: --output-format {r.output_format} is for DICOM input; this input is NIfTI")
    if not cases:
        raise UserError(f"{inp}: no NIfTI files (.nii, .nii.gz) or DICOM series found")
    cases = existing_outputs(cases, out, r.overwrite, r.resume)
    nothing = bundle.meta.extra.get("learned_nothing")
    if isinstance(nothing, dict):  # marked by its training (seg.run.learned)
        log.warning(
            "%s: this model learned nothing in training (%s %s < %s): its masks are not to be trusted",
            *(r.model, nothing.get("measured", "validation Dice"), nothing.get("dice"), LEARNED_NOTHING_DICE),
        )
    checkpoint = r.checkpoint or str(bundle.meta.extra.get("checkpoint") or "final")
    predictor = bundle.predictor(
        folds, device, r.tta, r.overlap, r.threshold, r.engine, precision, checkpoint, r.postprocess
    )
    notes = [bf16_note(predictor, r.model, cases, why) if precision == "bf16" else None]
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
        predictor.precision,
        " TTA" * r.tta,
    )
    return PredictRun(r, cases, predictor, bundle, out, [n for n in notes if n])


def run(p: PredictRun) -> BatchResult:
    """Predict every case of a prepared run into its output folder, which it holds locked: a second seg-predict
    into the same folder stops before writing (and so does one that finds masks a run wrote meanwhile)."""
    r = p.request
    probs = "nifti" if r.save_probabilities else "none"
    import seg

    opts = BatchOptions(
        probabilities=probs, overlay=r.png, workers=r.workers, progress=r.progress, keep_summary=r.resume,
        output_format=r.output_format, algorithm=(f"seg {p.bundle.meta.net_name}", seg.__version__),
        expected_labels=tuple(int(i) for i in p.bundle.meta.extra.get("labels_always") or ()),
    )  # fmt: skip
    with FolderLock(p.output, "seg-predict"):
        cases = existing_outputs(p.cases, p.output, r.overwrite, r.resume, lambda c: list(case_outputs(c, opts)))
        return predict_cases(cases, p.predictor, p.output, opts, p.bundle.labels)
