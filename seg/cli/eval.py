"""``seg-eval -p PRED_DIR -l LABEL_DIR [-o OUT]``: per-case and mean metrics, the paper's detection metrics.

``seg-eval compare RUN_A RUN_B``: paired per-case Dice difference of two evaluated runs (CV run folders,
or folders/files with a summary.json) with a Wilcoxon signed-rank test.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from seg.eval.evaluate import EvalError, evaluate_folders

    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "compare":
        from seg.cli.compare import main as compare_main

        return compare_main(argv[1:])

    p = argparse.ArgumentParser(prog="seg-eval", description=__doc__)
    p.add_argument("-p", "--pred", required=True, help="folder of predicted label maps (NIfTI)")
    p.add_argument("-l", "--labels", required=True, help="folder of reference label maps, same file names")
    p.add_argument("-o", "--output", default=None, help="folder for summary.json (default: PRED_DIR)")
    p.add_argument("-d", "--dataset-json", default=None, help="dataset.json giving the label names")
    p.add_argument("--no-surface", action="store_true", help="skip HD95, ASD and surface Dice (fast)")
    p.add_argument("--tolerance-mm", type=float, default=2.0, help="surface Dice tolerance")
    p.add_argument("--bins", type=float, nargs="+", default=[3.0], help="volume bin edges in ml")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--allow-missing", action="store_true", help="exit 0 although references have no prediction")
    a = p.parse_args(argv)
    labels = None
    if a.dataset_json:
        from seg.data.datalist import DatasetError, load_dataset

        try:
            labels = load_dataset(Path(a.dataset_json).parent).labels
        except DatasetError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    try:
        s = evaluate_folders(
            a.pred, a.labels, labels, a.output or a.pred, not a.no_surface, a.tolerance_mm, a.bins, a.workers
        )
    except EvalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{len(s['metric_per_case'])} cases; per label: mean Dice, HD95 mm, ASD mm (missed / spurious cases)")
    for k, v in s["mean"].items():

        def f(x, pat):
            return pat.format(x) if x is not None else "-"

        print(
            f"  {s['labels'][k]}: Dice {f(v.get('Dice'), '{:.4f}')}, HD95 {f(v.get('HD95'), '{:.2f}')}, "
            f"ASD {f(v.get('ASD'), '{:.2f}')} ({v['n_missed']} missed / {v['n_spurious']} spurious)"
        )
    print(f"summary: {Path(a.output or a.pred) / 'summary.json'}")
    for b in s["bad_cases"]:
        print(f"BAD {b['case']}: {b['problem']}", file=sys.stderr)
    if s["missing_cases"]:
        print(f"MISSING {len(s['missing_cases'])} predictions: {', '.join(s['missing_cases'][:20])}", file=sys.stderr)
    for cid, ids in s["undeclared_labels"].items():
        print(f"UNDECLARED {cid}: label ids {ids} are not in the dataset's labels (not scored)", file=sys.stderr)
    return 1 if s["bad_cases"] or (s["missing_cases"] and not a.allow_missing) else 0


if __name__ == "__main__":
    sys.exit(main())
