"""``seg-check-data ROOT``: report every problem of a dataset, one line each; exit 1 on any error."""

from __future__ import annotations

import argparse
import sys

from seg.cli.args import add_version
from seg.data.check import check_dataset, errors
from seg.data.datalist import load_dataset


def main(argv: list[str] | None = None) -> int:
    p = add_version(argparse.ArgumentParser(prog="seg-check-data", description=__doc__))
    p.add_argument(
        "root", help="dataset folder (MSD or nnU-Net raw, with dataset.json), or DICOM files (folder or zip)"
    )
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--allow-outside-root", action="store_true", help="accept entries outside the dataset folder")
    from seg.cli.common import command

    return command(_check)(p.parse_args(argv))


def _check(a: argparse.Namespace) -> int:
    from pathlib import Path

    from seg.inference.dicom import has_dicom

    if has_dicom(Path(a.root)) and not (Path(a.root) / "dataset.json").exists():
        return _check_dicom(Path(a.root))
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


def _check_dicom(root) -> int:
    """A folder or zip of DICOM files: each series as seg-predict would read it (seg.inference.dicom.check)."""
    import tempfile
    from pathlib import Path

    from seg.inference import dicom

    with tempfile.TemporaryDirectory(prefix="seg_dicom_") as work:
        rows, notes = dicom.check(dicom.unzip(root, Path(work)) if root.is_file() else root)
    for level, cid, line in rows:
        print(f"{level.upper()} {cid}: {line}", file=sys.stderr if level == "error" else sys.stdout)
    for note in notes:
        print(f"NOTE {note}")
    n_err, n_warn = (sum(r[0] == lv for r in rows) for lv in ("error", "warning"))
    print(
        f"{root}: {len({r[1] for r in rows})} series (DICOM), {n_err} errors, {n_warn} warnings, {len(notes)} skipped"
    )
    if not rows:
        print(f"ERROR {root}: no image series (every DICOM file was skipped)", file=sys.stderr)
    elif not n_err:  # a series no SEG can reference (a warning) is predicted as NIfTI only
        print(f"next: seg-predict -m MODEL -i {root} -o OUTPUT" + ("" if n_warn else " --output-format both"))
    return 1 if n_err or not rows else 0


_check.prog = "seg-check-data"


if __name__ == "__main__":
    sys.exit(main())
