"""Checks of seg-predict's plain options, each failing with one line (a :class:`~seg.config.UserError`)."""

from __future__ import annotations

from pathlib import Path

from seg.config import UserError
from seg.io import check_writable


def check_paths(input_path: str | Path, output: str | Path) -> tuple[Path, Path]:
    """Resolved ``(input, output)``; the input must exist and the output may not be the input's folder."""
    inp, out = Path(input_path).resolve(), Path(output).resolve()
    if not inp.exists():
        raise UserError(f"{inp}: input does not exist")
    if out == inp or (inp.is_file() and out == inp.parent):
        raise UserError(f"{out}: the output folder may not be the input (inputs are never overwritten)")
    return inp, out


def parse_folds(text: str, available: list[int]) -> list[int]:
    """``all`` or a comma-separated list of fold ids (at least one)."""
    if text.strip() == "all":
        return list(available)
    try:
        folds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--folds takes 'all' or a list like 0,1,2, got {text!r}") from None
    if not folds:
        raise UserError(f"--folds takes 'all' or a list like 0,1,2, got {text!r}")
    return folds


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA device is available")
    return name


def check_output_folder(out: Path) -> None:
    """The output folder is a folder that takes a file, or can be made (nothing is created here)."""
    check_writable(out, "output folder")


def existing_outputs(cases, out: Path, overwrite: bool, resume: bool, outputs=None) -> list:
    """The cases to predict. Outputs of these cases (``outputs(case)``: their file names; default the mask; a
    report or an overlay too) or a summary.csv already in ``out`` stop the command before any inference, unless
    ``overwrite`` (replace them) or ``resume`` (skip the cases whose mask exists)."""
    done = [c for c in cases if (out / c.output_name).exists()]
    if resume:
        return [c for c in cases if c not in done]
    there = [n for c in cases for n in (outputs(c) if outputs else [c.output_name]) if (out / n).exists()]
    if (there or _summary_with_masks(out / "summary.csv")) and not overwrite:
        what = (
            f"{len(done)} of the {len(cases)} masks"
            if done
            else f"{len(there)} of their outputs"
            if there
            else "a summary.csv"
        )
        example = f" (e.g. {(done[0].output_name if done else there[0])})" if there else ""
        raise UserError(
            f"{out}: {what} exist already{example}: --overwrite replaces them, --continue skips "
            "the cases whose mask is there"
        )
    return list(cases)


def _summary_with_masks(path: Path) -> bool:
    """An earlier ``summary.csv`` that lists a written mask (one of a run where every case failed is replaced:
    it would block the retry for nothing)."""
    import csv

    if not path.exists():
        return False
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError):
        return True  # unreadable: not replaced unasked
    return not rows or any(not str(r.get("mask") or "").startswith("FAILED") for r in rows)


def parse_threshold(text: str) -> float | str:
    """``--threshold``: a probability in (0, 1], or ``argmax``."""
    if text == "argmax":
        return text
    try:
        t = float(text)
    except ValueError:
        raise UserError(f"--threshold {text!r}: give a probability in (0, 1] or 'argmax'") from None
    if not 0 < t <= 1:
        raise UserError(f"--threshold {text!r}: give a probability in (0, 1] or 'argmax'")
    return t


def operating_point(labels: dict, threshold: float | None, asked) -> str:
    """The mask rule seg-predict applies, and where it comes from (``asked``: the ``--threshold`` given)."""
    if len(labels) != 2:
        return f"argmax over {len(labels)} classes"
    if threshold is None:
        return "argmax" + (" (--threshold argmax)" if asked == "argmax" else " (the bundle has no threshold)")
    src = "--threshold" if asked is not None else "the bundle's, from its k-fold threshold scan (report.md)"
    return f"foreground probability >= {threshold:g} ({src})"
