"""``seg-check-data ROOT``: report every problem of a dataset, one line each; exit 1 on any error."""

from __future__ import annotations

import argparse
import sys

from seg.cli.args import add_version
from seg.data.check import check_dataset, errors
from seg.data.datalist import load_dataset


def main(argv: list[str] | None = None) -> int:
    p = add_version(argparse.ArgumentParser(prog="seg-check-data", description=__doc__))
    p.add_argument("root", help="dataset folder (MSD or nnU-Net raw, with dataset.json)")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--allow-outside-root", action="store_true", help="accept entries outside the dataset folder")
    from seg.cli.common import command

    return command(_check)(p.parse_args(argv))


def _check(a: argparse.Namespace) -> int:
    spec = load_dataset(a.root, a.allow_outside_root)
    problems = check_dataset(spec, a.workers)
    for prob in problems:
        print(prob, file=sys.stderr if prob.level == "error" else sys.stdout)
    n_err = len(errors(problems))
    n_warn = len(problems) - n_err
    print(f"{spec.root}: {len(spec.cases)} cases ({spec.layout}), {n_err} errors, {n_warn} warnings")
    if not n_err:
        print(f"next: seg-plan {a.root}")
    return 1 if n_err else 0


_check.prog = "seg-check-data"


if __name__ == "__main__":
    sys.exit(main())
