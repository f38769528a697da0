"""Checks of seg-predict's plain options, each failing with one line (a :class:`~seg.config.UserError`)."""

from __future__ import annotations

from pathlib import Path

from seg.config import UserError


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
