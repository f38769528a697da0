"""``seg-check-data ROOT``: report every problem of a dataset, one line each; exit 1 on any error."""

from __future__ import annotations

import argparse
import sys

from seg.data.check import check_dataset, errors
from seg.data.datalist import DatasetError, load_dataset


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="seg-check-data", description=__doc__)
    p.add_argument("root", help="dataset folder (MSD or nnU-Net raw, with dataset.json)")
    p.add_argument("--workers", type=int, default=None)
    a = p.parse_args(argv)
    try:
        spec = load_dataset(a.root)
    except DatasetError as e:
        print(f"ERROR {e}", file=sys.stderr)
        return 1
    problems = check_dataset(spec, a.workers)
    for prob in problems:
        print(prob, file=sys.stderr if prob.level == "error" else sys.stdout)
    n_err = len(errors(problems))
    n_warn = len(problems) - n_err
    print(f"{spec.root}: {len(spec.cases)} cases ({spec.layout}), {n_err} errors, {n_warn} warnings")
    return 1 if n_err else 0


if __name__ == "__main__":
    sys.exit(main())
