"""``seg-export -m MODEL_DIR [--format onnx|torchscript] [--folds all|0,1] [-o OUT]``.

Writes each fold's network as ``fold_<k>/model.onnx`` (or ``model.ts``) into the bundle itself, or into a
copy of it at ``-o OUT`` (the source then stays untouched), after checking that its softmax equals
PyTorch's within 1e-4 at two input sizes; records the export in ``model.yaml``. A network that cannot be
exported is refused with one line saying why (exit code 2). The runner is
:func:`seg.inference.export.export_bundle`; ``seg-predict --engine onnxruntime`` runs the result.
"""

from __future__ import annotations

import argparse
import sys

from seg.cli.args import add_version


def main(argv: list[str] | None = None) -> int:
    p = add_version(
        argparse.ArgumentParser(
            prog="seg-export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
    )
    p.add_argument("-m", "--model", dest="model_opt", help="model bundle folder (model.yaml + fold_<k>/weights.pt)")
    p.add_argument("model", nargs="?", help=argparse.SUPPRESS)  # seg-export MODEL_DIR, as before -m
    p.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    p.add_argument("--folds", default="all", help="'all' or e.g. 0,1,2")
    p.add_argument("-o", "--output", default=None, help="write into a copy of the bundle here (default: in place)")
    a = p.parse_args(argv)
    if bool(a.model) == bool(a.model_opt):
        p.error("give the model bundle as -m MODEL_DIR")
    a.model = a.model or a.model_opt
    from seg.cli.common import command

    return command(_export)(a)


def _export(a: argparse.Namespace) -> int:
    from seg.cli.common import setup_logging
    from seg.errors import UserError
    from seg.inference.bundle import load_bundle
    from seg.inference.export import export_bundle
    from seg.inference.options import parse_folds

    setup_logging()
    bundle = load_bundle(a.model)
    try:
        record = export_bundle(bundle, a.format, parse_folds(a.folds, bundle.folds), a.output)
    except OSError as e:
        raise UserError(f"{getattr(e, 'filename', None) or a.output or a.model}: {e.strerror or e}") from None
    where = a.output or a.model
    diffs = ", ".join(f"fold {k}: {v:.2g}" for k, v in record["parity_max_abs_softmax_diff"].items())
    print(f"{a.format} export of folds {record['folds']} written to {where} (softmax max |diff| vs PyTorch: {diffs})")
    if a.format == "onnx":
        print(f"next: seg-predict -m {where} --engine onnxruntime -i INPUT -o OUTPUT")
    return 0


_export.prog = "seg-export"

if __name__ == "__main__":
    sys.exit(main())
