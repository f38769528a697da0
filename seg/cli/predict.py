"""``seg-predict -i INPUT -o OUTPUT -m MODEL_DIR``: NIfTI volumes in, uint8 NIfTI masks out, on the inputs' grids.

No Hydra: the model bundle (``model.yaml`` + ``fold_<k>/weights.pt``) carries everything. A bad input is
reported and skipped; the rest are processed; the exit code is 1 at the end if anything failed. Masks
are written under a temporary name and renamed; inputs are never overwritten.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

log = logging.getLogger("seg.predict")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="seg-predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    paths = (  # -i/-o/-m default to $SEG_INPUT/$SEG_OUTPUT/$SEG_MODEL (the Docker image sets them)
        ("-i", "--input", "SEG_INPUT", "a NIfTI file, a folder of them, or nnU-Net CASE_0000 channel files"),
        ("-o", "--output", "SEG_OUTPUT", "output folder (masks as OUTPUT/<case>.nii.gz)"),
        ("-m", "--model", "SEG_MODEL", "model bundle folder (model.yaml + fold_<k>/weights.pt)"),
    )
    for short, long, var, text in paths:
        value = os.environ.get(var)
        p.add_argument(short, long, default=value, required=not value, help=f"{text} (default: ${var})")
    p.add_argument(
        "--engine",
        choices=["torch", "onnxruntime"],
        default="torch",
        help="torch (default), or onnxruntime: each fold's model.onnx from seg-export, on the CPU",
    )
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="bf16: torch autocast (CPUs with AVX512-BF16/AMX, CUDA); checked first on the first case: the fp32 "
        "and bf16 masks must agree (Dice >= 0.999) or nothing is predicted (exit 2)",
    )
    p.add_argument("--folds", default="all", help="'all' or e.g. 0,1,2: the folds to ensemble (mean softmax)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--tta", action="store_true", help="test-time augmentation: average over all mirrorings")
    p.add_argument("--overlap", type=float, default=None, help="sliding-window overlap (default: the bundle's)")
    p.add_argument(
        "--save-probabilities", action="store_true", help="also write <case>_prob.nii.gz (float32, per class)"
    )
    p.add_argument(
        "--threshold",
        type=_threshold,
        default=None,
        help="foreground probability threshold for two-class models, or 'argmax' (default: the bundle's "
        "operating point from its k-fold threshold scan, argmax when it has none)",
    )
    p.add_argument("--png", action="store_true", help="an overlay montage per case (<case>.png)")
    p.add_argument("--workers", type=int, default=1, help="threads reading and checking the next inputs ahead")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--overwrite", action="store_true", help="replace masks that exist in OUTPUT")
    g.add_argument("--continue", dest="resume", action="store_true", help="skip cases whose mask is in OUTPUT")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    from seg.cli.common import user_errors
    from seg.config import UserError
    from seg.inference.batch import BatchOptions, predict_cases
    from seg.inference.bundle import load_bundle
    from seg.inference.cases import discover
    from seg.inference.options import check_output_folder, check_paths, existing_outputs, parse_folds, resolve_device

    try:
        inp, out = check_paths(a.input, a.output)
        check_output_folder(out)
        bundle = load_bundle(a.model)
        folds = parse_folds(a.folds, bundle.folds)
        device = resolve_device(a.device)
        cases = discover(inp, len(bundle.meta["channel_names"]))
        if not cases:
            raise FileNotFoundError(f"{inp}: no NIfTI files (.nii, .nii.gz) found")
        cases = existing_outputs(cases, out, a.overwrite, a.resume)
        if a.engine == "onnxruntime" and device != "cpu":
            raise UserError("--engine onnxruntime runs on the CPU here: add --device cpu")
        if a.engine == "onnxruntime" and a.precision == "bf16":
            raise UserError(
                "--precision bf16 is for --engine torch: ONNX Runtime's CPU provider has no bf16 convolutions"
            )
        predictor = bundle.predictor(folds, device, a.tta, a.overlap, a.threshold, a.engine, a.precision)
        if a.precision == "bf16":
            check_bf16(predictor, a.model, cases)
    except (*user_errors(), ValueError, RuntimeError) as e:
        print(f"error: {e}".splitlines()[0], file=sys.stderr)
        return 2
    print(f"operating point: {operating_point(bundle, predictor, a.threshold)}")
    net = bundle.meta["net"]["name"]
    log.info(
        "%d cases, model %s (%s, folds %s) on %s, %s %s%s",
        len(cases),
        a.model,
        net,
        folds,
        device,
        a.engine,
        a.precision,
        " TTA" * a.tta,
    )
    probs = "nifti" if a.save_probabilities else "none"
    opts = BatchOptions(probabilities=probs, overlay=a.png, workers=a.workers, progress=not a.quiet)
    res = predict_cases(cases, predictor, out, opts, bundle.labels)
    failed = f"; {len(res.failures)} failed:" if res.failures else ""
    print(f"{len(res.written)} of {len(cases)} cases written to {out}{failed}")
    for cid, problem in res.failures:
        print(f"FAILED {cid}: {problem}", file=sys.stderr)
    return 1 if res.failures else 0


def check_bf16(predictor, model: str, cases) -> None:
    """bf16 only if its masks agree with fp32's on the first readable case (Dice >= 0.999); else a UserError."""
    from seg.config import UserError
    from seg.inference.agreement import MIN_AGREEMENT, bf16_agreement
    from seg.inference.cases import validate

    case = next((c for c in cases if validate(c)[0] is None), None)
    if case is None:
        return  # nothing readable: the batch reports every case
    agree = bf16_agreement(predictor, case.files)
    if agree < MIN_AGREEMENT:
        raise UserError(
            f"{model}: --precision bf16 refused for this net: Dice between its fp32 and bf16 masks is "
            f"{agree:.4f} < {MIN_AGREEMENT} on {case.case_id}"
        )
    print(f"bf16 agreement: Dice {agree:.4f} between fp32 and bf16 masks on {case.case_id} (>= {MIN_AGREEMENT})")


def _threshold(text: str) -> float | str:
    if text == "argmax":
        return text
    try:
        t = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a probability in (0, 1] or 'argmax'") from None
    if not 0 < t <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a probability in (0, 1] or 'argmax'")
    return t


def operating_point(bundle, predictor, asked) -> str:
    """The mask rule seg-predict applies, and where it comes from."""
    if len(bundle.labels) != 2:
        return f"argmax over {len(bundle.labels)} classes"
    if predictor.threshold is None:
        return "argmax" + (" (--threshold argmax)" if asked == "argmax" else " (the bundle has no threshold)")
    src = "--threshold" if asked is not None else "the bundle's, from its k-fold threshold scan (report.md)"
    return f"foreground probability >= {predictor.threshold:g} ({src})"


if __name__ == "__main__":
    sys.exit(main())
