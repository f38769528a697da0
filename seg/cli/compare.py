"""``seg-eval compare RUN_A RUN_B``: paired per-case Dice difference of two evaluated runs (CV run folders,
or folders/files with a summary.json) with a Wilcoxon signed-rank test. The runner is
:func:`seg.eval.compare.compare_runs`.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str]) -> int:
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
