"""``seg-synth -o DIR -n N --seed S``: write the synthetic dataset."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from seg.cli.args import add_version
from seg.data.synthetic import write_dataset

MIN_SHAPE, MAX_SHAPE = 16, 512  # the head model needs room for scalp, skull and lesions


def main(argv: list[str] | None = None) -> int:
    p = add_version(argparse.ArgumentParser(prog="seg-synth", description=__doc__))
    p.add_argument("-o", "--output", required=True, help="output dataset folder")
    p.add_argument("-n", "--num-cases", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shape", type=int, nargs=3, default=[64, 64, 64], metavar=("X", "Y", "Z"))
    p.add_argument("--layout", choices=["msd", "nnunet"], default="msd")
    p.add_argument("--target", choices=["lesions", "ventricles"], default="lesions", help="the labelled structure")
    p.add_argument("--overwrite", action="store_true", help="write into a folder that holds a dataset already")
    from seg.cli.common import command

    return command(_synth)(p.parse_args(argv))


def _synth(a: argparse.Namespace) -> int:
    from seg.errors import UserError
    from seg.io import check_space

    if a.num_cases < 1:
        raise UserError(f"-n {a.num_cases}: at least 1 case")
    if min(a.shape) < MIN_SHAPE or max(a.shape) > MAX_SHAPE:
        raise UserError(f"--shape {' '.join(map(str, a.shape))}: each axis {MIN_SHAPE} to {MAX_SHAPE} voxels")
    out = Path(a.output)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    if (out / "dataset.json").exists() and not a.overwrite:
        raise UserError(f"{out}: holds a dataset already (dataset.json); --overwrite to replace it, or another -o")
    check_space(out, a.num_cases * 5 * a.shape[0] * a.shape[1] * a.shape[2])  # float32 image + uint8 label
    out = write_dataset(out, a.num_cases, a.seed, tuple(a.shape), a.layout, a.target)
    print(f"wrote {a.num_cases} synthetic cases to {out}")
    print(f"next: seg-check-data {out}")
    return 0


_synth.prog = "seg-synth"

if __name__ == "__main__":
    sys.exit(main())
