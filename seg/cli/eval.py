"""``seg-eval -p PRED_DIR -l LABEL_DIR [-o OUT]``: per-case and mean metrics, the paper's detection metrics.

``seg-eval compare RUN_A RUN_B``: paired per-case Dice difference of two evaluated runs (CV run folders,
or folders/files with a summary.json) with a Wilcoxon signed-rank test.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def compare_main(argv: list[str]) -> int:
    from seg.eval.compare import CompareError, compare_runs

    p = argparse.ArgumentParser(prog="seg-eval compare", description="paired comparison of two evaluated runs")
    p.add_argument("run_a")
    p.add_argument("run_b")
    p.add_argument("-o", "--output", default=None, help="write the comparison as JSON here")
    a = p.parse_args(argv)
    try:
        r = compare_runs(a.run_a, a.run_b)
    except (CompareError, FileNotFoundError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"{r['n_cases']} paired cases: mean Dice A {r['dice_a']:.4f}, B {r['dice_b']:.4f}; "
        f"B - A mean {r['mean_diff']:+.4f}, median {r['median_diff']:+.4f}; B better in {r['b_better']}, "
        f"A better in {r['a_better']}; Wilcoxon signed-rank p = {r['wilcoxon_p']:.4g}"
    )
    if a.output:
        from seg.io import write_text

        write_text(a.output, json.dumps(r, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    from seg.eval.evaluate import EvalError, evaluate_folders

    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "compare":
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
    print(
        f"{len(s['metric_per_case'])} cases; mean Dice per label: "
        + ", ".join(f"{s['labels'][k]}={v['Dice']:.4f}" for k, v in s["mean"].items() if v.get("Dice") is not None)
    )
    print(f"summary: {Path(a.output or a.pred) / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
