"""``seg-predict -i INPUT -o OUTPUT -m MODEL_DIR``: NIfTI volumes in, NIfTI label maps out, on the inputs' grids.

No Hydra: the model bundle (``model.yaml`` + ``fold_<k>/weights.pt``) carries everything. A bad input is
reported and skipped; the rest are processed. Exit codes: 0 all written, 1 some cases failed (each
named), 2 refused before any case. Outputs are written under a temporary name and renamed; inputs are
never overwritten. The runner is :mod:`seg.run.predict`.
"""

from __future__ import annotations

import argparse
import os
import sys

from seg.cli.args import add_version

PATHS = (  # -i/-o/-m default to $SEG_INPUT/$SEG_OUTPUT/$SEG_MODEL (the Docker image sets them)
    ("-i", "--input", "SEG_INPUT", "a NIfTI file, a folder of them, nnU-Net CASE_0000 files, or DICOM (folder, zip)"),
    ("-o", "--output", "SEG_OUTPUT", "output folder (masks as OUTPUT/<case>.nii.gz)"),
    ("-m", "--model", "SEG_MODEL", "model bundle folder (model.yaml + fold_<k>/weights.pt)"),
)
OPTIONS = (  # (flags, kwargs) of the plain options
    (("--engine",), dict(choices=["torch", "onnxruntime"], default="torch", help="torch, or onnxruntime (seg-export)")),
    (("--precision",), dict(choices=["auto", "fp32", "bf16"], default="auto", help="auto: seg-docs predict")),
    (("--folds",), dict(default="all", help="'all' or e.g. 0,1,2: the folds to ensemble (mean softmax)")),
    (("--checkpoint",), dict(choices=["final", "best"], default=None, help="each fold's weights (default final)")),
    (("--device",), dict(choices=["auto", "cpu", "cuda"], default="auto")),
    (("--tta",), dict(action="store_true", help="test-time augmentation: mean over all mirrorings")),
    (("--overlap",), dict(type=float, default=None, help="sliding-window overlap (default: the bundle's)")),
    (("--output-format",), dict(choices=["nifti", "dicom-seg", "both"], default="nifti", help="DICOM input: SEG")),
    (("--save-probabilities",), dict(action="store_true", help="also <case>_prob.nii.gz (float32, per class)")),
    (("--threshold",), dict(default=None, help="foreground probability threshold, or argmax (default: bundle's)")),
    (("--png",), dict(action="store_true", help="an overlay montage per case (<case>.png)")),
    (("--no-postprocessing",), dict(dest="postprocess", action="store_false", help="ignore the bundle's")),
    (("--workers",), dict(type=int, default=1, help="threads checking the next inputs ahead")),
    (("-q", "--quiet"), dict(action="store_true", help="no progress bar")),
)


def build_parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    p = add_version(argparse.ArgumentParser(prog="seg-predict", description=__doc__, formatter_class=raw))
    for short, long, var, text in PATHS:
        value = os.environ.get(var)
        p.add_argument(short, long, default=value, required=not value, help=f"{text} (default: ${var})")
    for flags, kw in OPTIONS:
        p.add_argument(*flags, **kw)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--overwrite", action="store_true", help="replace masks that exist in OUTPUT")
    g.add_argument("--continue", dest="resume", action="store_true", help="skip cases whose mask is in OUTPUT")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    from seg.cli.common import command

    return command(_predict)(a)


def _predict(a: argparse.Namespace) -> int:
    from seg.cli.common import setup_logging
    from seg.inference.options import parse_threshold
    from seg.run.predict import PredictRequest, prepare, run

    setup_logging()
    keys = PredictRequest.__dataclass_fields__
    req = PredictRequest(**{k: v for k, v in vars(a).items() if k in keys}, progress=not a.quiet)
    req.threshold = parse_threshold(a.threshold) if a.threshold is not None else None
    prepared = prepare(req)
    print("\n".join(prepared.notes))
    res = run(prepared)
    failed = f"; {len(res.failures)} failed:" if res.failures else ""
    print(f"{len(res.written)} of {len(prepared.cases)} cases written to {prepared.output}{failed}")
    for cid, problem in res.failures:
        print(f"FAILED {cid}: {problem}", file=sys.stderr)
    if res.written and not res.failures:
        print(f"next: seg-eval -p {prepared.output} -l LABELS_FOLDER -d DATASET/dataset.json  (-d: the label names)")
    return 1 if res.failures else 0


_predict.prog = "seg-predict"

if __name__ == "__main__":
    sys.exit(main())
