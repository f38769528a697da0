"""``seg-eval -p PRED_DIR -l LABEL_DIR [-o OUT]``: per-case and mean metrics, the paper's detection metrics.

``seg-eval compare RUN_A RUN_B``: paired per-case Dice difference of two evaluated runs (CV run folders,
or folders/files with a summary.json) with a Wilcoxon signed-rank test.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from seg.cli.args import add_version


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "compare":
        from seg.cli.compare import main as compare_main

        return compare_main(argv[1:])
    p = add_version(argparse.ArgumentParser(prog="seg-eval", description=__doc__))
    p.add_argument("-p", "--pred", required=True, help="folder of predicted label maps (NIfTI)")
    p.add_argument("-l", "--labels", required=True, help="folder of reference label maps, same file names")
    p.add_argument("-o", "--output", default=None, help="folder for summary.json (default: PRED_DIR)")
    p.add_argument("-d", "--dataset-json", default=None, help="dataset.json giving the label names")
    p.add_argument("--no-surface", action="store_true", help="skip HD95, ASD and surface Dice (fast)")
    p.add_argument("--tolerance-mm", type=float, default=2.0, help="surface Dice tolerance")
    p.add_argument(
        "--bins", type=float, nargs="+", help="volume bin edges in ml (default: each label's median patient volume)"
    )
    p.add_argument("--matching", choices=["hungarian", "raidionics"], default="hungarian", help="object matching")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--allow-missing", action="store_true", help="exit 0 although references have no prediction")
    from seg.cli.common import command

    return command(_eval)(p.parse_args(argv))


def _f(x, pat: str) -> str:
    return pat.format(x) if x is not None else "-"


def _eval(a: argparse.Namespace) -> int:
    from seg.config import UserError
    from seg.data.datalist import read_labels
    from seg.eval.evaluate import evaluate_folders

    labels = read_labels(a.dataset_json) if a.dataset_json else None
    out = a.output or a.pred
    ref = Path(a.labels).resolve()
    if Path(a.pred).resolve() == ref:
        raise UserError(f"{ref}: -p and -l are one folder: the references would be scored against themselves")
    if Path(out).resolve() == ref:
        raise UserError(f"{ref}: the output folder may not be the references' folder (inputs are never written)")
    s = evaluate_folders(a.pred, a.labels, labels, out, not a.no_surface, a.tolerance_mm, a.bins, a.workers, a.matching)
    print(f"{len(s['metric_per_case'])} cases; per label: mean Dice, HD95 mm, ASD mm (missed / spurious cases)")
    for k, v in s["mean"].items():
        print(
            f"  {s['labels'][k]}: Dice {_f(v.get('Dice'), '{:.4f}')}, HD95 {_f(v.get('HD95'), '{:.2f}')}, "
            f"ASD {_f(v.get('ASD'), '{:.2f}')} ({v['n_missed']} missed / {v['n_spurious']} spurious)"
        )
    print(f"summary: {Path(out) / 'summary.json'}")
    print(f"next: seg-eval compare {out} OTHER_RESULTS  (paired per-case Dice against another model's, Wilcoxon)")
    for b in s["bad_cases"]:
        print(f"BAD {b['case']}: {b['problem']}", file=sys.stderr)
    if s["missing_cases"]:
        print(f"MISSING {len(s['missing_cases'])} predictions: {', '.join(s['missing_cases'][:20])}", file=sys.stderr)
    for c in s["metric_per_case"]:
        if c.get("undeclared_labels"):
            print(
                f"UNDECLARED {c['prediction_file']}: label ids {c['undeclared_labels']} are not in the dataset's "
                "labels (not scored)",
                file=sys.stderr,
            )
    return 1 if s["bad_cases"] or (s["missing_cases"] and not a.allow_missing) else 0


_eval.prog = "seg-eval"

if __name__ == "__main__":
    sys.exit(main())
