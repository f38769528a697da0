"""``seg-synth -o DIR -n N --seed S``: write the synthetic dataset."""

from __future__ import annotations

import argparse
import sys

from seg.data.synthetic import write_dataset


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="seg-synth", description=__doc__)
    p.add_argument("-o", "--output", required=True, help="output dataset folder")
    p.add_argument("-n", "--num-cases", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shape", type=int, nargs=3, default=[64, 64, 64], metavar=("X", "Y", "Z"))
    p.add_argument("--layout", choices=["msd", "nnunet"], default="msd")
    a = p.parse_args(argv)
    if a.num_cases < 1:
        p.error("-n must be at least 1")
    out = write_dataset(a.output, a.num_cases, a.seed, tuple(a.shape), a.layout)
    print(f"wrote {a.num_cases} synthetic cases to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
