"""Paired comparison of two evaluated runs: per-case Dice differences and a Wilcoxon signed-rank test."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from scipy.stats import wilcoxon

from seg.data.datalist import case_id_from_path
from seg.errors import SegError


class CompareError(SegError, ValueError):
    pass


def _summary(run: str | Path) -> tuple[Path, dict]:
    run = Path(run)
    for name in ("cv_summary.json", "summary.json"):
        if (run / name).is_file():
            return run / name, json.loads((run / name).read_text())
    if run.is_file():
        return run, json.loads(run.read_text())
    raise CompareError(f"{run}: no cv_summary.json or summary.json")


def _per_case_dice(s: dict) -> dict[str, float]:
    out = {}
    for c in s["metric_per_case"]:
        # a CV summary keys cases by id, seg-eval's by file: the id from the reference's name pairs both kinds
        cid = c.get("case_id") or case_id_from_path(c["reference_file"])
        vals = [m.get("Dice") for m in c["metrics"].values()]
        vals = [v for v in vals if v is not None and not math.isnan(v)]
        if vals:
            out[cid] = float(np.mean(vals))
    return out


def compare_runs(run_a: str | Path, run_b: str | Path) -> dict:
    """Cases evaluated in both runs: mean Dice of each, mean/median paired difference (B - A), Wilcoxon p."""
    pa, sa = _summary(run_a)
    pb, sb = _summary(run_b)
    da, db = _per_case_dice(sa), _per_case_dice(sb)
    common = sorted(set(da) & set(db))
    if len(common) < 2:
        raise CompareError(f"{pa} and {pb} share {len(common)} evaluated cases; a paired test needs more")
    a = np.array([da[c] for c in common])
    b = np.array([db[c] for c in common])
    diff = b - a
    if np.allclose(diff, 0):
        p = 1.0
    else:
        p = float(wilcoxon(b, a, zero_method="wilcox", alternative="two-sided").pvalue)
    return {
        "run_a": str(pa),
        "run_b": str(pb),
        "n_cases": len(common),
        "dice_a": float(a.mean()),
        "dice_b": float(b.mean()),
        "mean_diff": float(diff.mean()),
        "median_diff": float(np.median(diff)),
        "b_better": int((diff > 0).sum()),
        "a_better": int((diff < 0).sum()),
        "wilcoxon_p": p,
        "per_case": [{"case": c, "dice_a": float(x), "dice_b": float(y)} for c, x, y in zip(common, a, b)],
    }
