"""``seg-eval compare RUN_A RUN_B``: paired per-case Dice difference of two evaluated runs (CV run folders,
or folders/files with a summary.json) with a Wilcoxon signed-rank test. The runner is
:func:`seg.eval.compare.compare_runs`.
"""

from __future__ import annotations

import argparse
import json

from seg.cli.args import add_version


def main(argv: list[str]) -> int:
    p = add_version(argparse.ArgumentParser(prog="seg-eval compare", description="paired comparison of two runs"))
    p.add_argument("run_a")
    p.add_argument("run_b")
    p.add_argument("-o", "--output", default=None, help="write the comparison as JSON here")
    from seg.cli.common import command

    return command(_compare)(p.parse_args(argv))


def _compare(a: argparse.Namespace) -> int:
    from seg.errors import UserError
    from seg.eval.compare import compare_runs

    try:
        r = compare_runs(a.run_a, a.run_b)
    except (FileNotFoundError, json.JSONDecodeError) as e:
        raise UserError(str(e)) from None
    print(
        f"{r['n_cases']} paired cases: mean Dice A {r['dice_a']:.4f}, B {r['dice_b']:.4f}; "
        f"B - A mean {r['mean_diff']:+.4f}, median {r['median_diff']:+.4f}; B better in {r['b_better']}, "
        f"A better in {r['a_better']}; Wilcoxon signed-rank p = {r['wilcoxon_p']:.4g}"
    )
    if a.output:
        from seg.io import write_text

        write_text(a.output, json.dumps(r, indent=1))
    return 0


_compare.prog = "seg-eval"
