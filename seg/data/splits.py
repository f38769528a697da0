"""Train/validation splits in nnU-Net's ``splits_final.json`` form: ``[{"train": [...], "val": [...]}, ...]``.

Made once (seeded, optionally grouped by subject and stratified), saved, reused if present, editable by
hand. A case in both the train and val list of a fold is an error.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from seg.errors import SegError
from seg.io import write_text


class SplitError(SegError, ValueError):
    pass


def make_splits(
    case_ids: Sequence[str],
    num_folds: int = 5,
    seed: int = 0,
    groups: Mapping[str, str] | None = None,
    strata: Mapping[str, int] | None = None,
) -> list[dict[str, list[str]]]:
    """K-fold splits over ``case_ids``.

    Args:
        case_ids: all case ids.
        num_folds: K (>= 2).
        seed: shuffling seed.
        groups: case id -> subject id; all cases of one subject land in the same fold.
        strata: case id -> stratum (e.g. a label-volume bin); folds get a balanced share of each.
    """
    ids = sorted(case_ids)
    if num_folds < 2:
        raise SplitError(f"num_folds must be >= 2, got {num_folds}")
    groups = groups or {c: c for c in ids}
    units: dict[str, list[str]] = defaultdict(list)
    for c in ids:
        units[groups.get(c, c)].append(c)
    if len(units) < num_folds:
        raise SplitError(
            f"{len(units)} subjects cannot fill {num_folds} folds (each fold validates on one at least): "
            f"set data.num_folds (seg-kfold: cv.folds) to at most {len(units)}"
            if len(units) >= 2
            else f"{len(units)} subject cannot be split into training and validation cases: it takes 2 at least"
        )
    rng = np.random.default_rng(seed)
    by_stratum: dict[int, list[str]] = defaultdict(list)
    for u in sorted(units):
        by_stratum[int(strata.get(units[u][0], 0)) if strata else 0].append(u)
    fold_of: dict[str, int] = {}
    offset = 0
    for s in sorted(by_stratum):
        us = by_stratum[s]
        order = rng.permutation(len(us))
        for j, idx in enumerate(order):
            fold_of[us[idx]] = (offset + j) % num_folds
        offset += len(us)  # continue the round-robin so small strata do not all start at fold 0
    splits = []
    for k in range(num_folds):
        val = sorted(c for u, f in fold_of.items() if f == k for c in units[u])
        train = sorted(c for u, f in fold_of.items() if f != k for c in units[u])
        splits.append({"train": train, "val": val})
    return splits


def validate_splits(splits: list, case_ids: Sequence[str] | None = None, path: str = "splits") -> None:
    """Raise :class:`SplitError` for overlapping train/val or cases unknown to the dataset."""
    if not isinstance(splits, list) or not splits:
        raise SplitError(f"{path}: expected a non-empty list of {{'train': [...], 'val': [...]}}")
    known = set(case_ids) if case_ids is not None else None
    for k, fold in enumerate(splits):
        if not isinstance(fold, dict) or "train" not in fold or "val" not in fold:
            raise SplitError(f"{path}: fold {k} needs 'train' and 'val' lists")
        overlap = sorted(set(fold["train"]) & set(fold["val"]))
        if overlap:
            raise SplitError(f"{path}: fold {k} has {len(overlap)} cases in both train and val: {overlap[:5]}")
        if not all(isinstance(fold[part], list) for part in ("train", "val")):
            raise SplitError(f"{path}: fold {k}: 'train' and 'val' must be lists of case ids")
        if not fold["val"]:
            raise SplitError(f"{path}: fold {k} has no validation cases")
        if not fold["train"]:
            raise SplitError(f"{path}: fold {k} has no training cases")
        if known is not None:
            unknown = sorted((set(fold["train"]) | set(fold["val"])) - known)
            if unknown:
                raise SplitError(f"{path}: fold {k} names cases not in the dataset: {unknown[:5]}")


def load_or_create_splits(
    path: str | Path, case_ids: Sequence[str], num_folds: int = 5, seed: int = 0, **kwargs
) -> list:
    """Reuse ``path`` if it exists (validated), else make splits and save them there."""
    path = Path(path)
    if path.exists():
        try:
            splits = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise SplitError(f"{path}: not valid JSON ({e.msg})") from None
        validate_splits(splits, case_ids, str(path))
        return splits
    splits = make_splits(case_ids, num_folds, seed, **kwargs)
    validate_splits(splits, case_ids, str(path))
    write_text(path, json.dumps(splits, indent=1))
    return splits


def label_volumes(cases) -> dict[str, float]:
    """Foreground volume (ml) of each case's label (``cases``: items with ``case_id`` and ``label``)."""
    import nibabel as nib

    out = {}
    for c in cases:
        img = nib.load(c.label)
        voxel_ml = float(np.prod(img.header.get_zooms()[:3])) / 1000
        out[c.case_id] = float(np.count_nonzero(np.asanyarray(img.dataobj)) * voxel_ml)
    return out


def subject_groups(case_ids: Sequence[str], group_regex: str | None) -> dict[str, str] | None:
    """Case id -> subject id by ``group_regex`` (its first group, else its whole match, else the case id)."""
    if not group_regex:
        return None
    pat, groups = re.compile(group_regex), {}
    for cid in case_ids:
        m = pat.search(cid)
        groups[cid] = m.group(1) if m and m.groups() else (m.group(0) if m else cid)
    return groups


def volume_strata(cases, n_strata: int) -> dict[str, int]:
    """Case id -> label-volume stratum (``n_strata`` quantile bins)."""
    vols = label_volumes(cases)
    n = max(1, int(n_strata))
    qs = np.quantile(list(vols.values()), np.linspace(0, 1, n + 1)[1:-1]) if n > 1 else []
    return {cid: int(np.searchsorted(qs, v, side="right")) for cid, v in vols.items()}


def dataset_splits(
    path: str | Path,
    cases,
    num_folds: int,
    seed: int,
    stratify: bool = True,
    n_strata: int = 3,
    group_regex: str | None = None,
) -> list:
    """The one splitter of seg-train (``data.fold``) and seg-kfold (fold k): ``path`` if it exists, else
    seeded splits (``data.split_seed``), grouped by subject and stratified by label volume, saved there.
    The same dataset, fold count, seed and options give the same splits in both."""
    ids = [c.case_id for c in cases]
    if Path(path).exists():
        return load_or_create_splits(path, ids, num_folds, seed)
    strata = volume_strata(cases, n_strata) if stratify else None
    groups = subject_groups(ids, group_regex)
    return load_or_create_splits(path, ids, num_folds, seed, groups=groups, strata=strata)
