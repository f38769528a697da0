"""Train hippocampus experiments (or plans) at one time budget over several seeds, one run at a time, and
print the validation Dice as mean +- sd per experiment, so a difference between architectures is read
against the spread between seeds (nnU-Net's own replicate runs differ by up to 3 Dice points).

    python scripts/compare_hippocampus.py --minutes 20 --seeds 0 1 2 hippocampus_unet plan=outputs/plans/x.yaml

Without ``--minutes`` every config keeps its own budget (an ensemble plan's ``trainer.max_time`` is one
member's: ``plan=60m.yaml`` with three members runs 3 x 20 minutes; the seed is member 0's).
Fold 0 of the same 5-fold split for every run (``data/splits/hippocampus_compare.json``; the training seed
changes, the split does not).
Reported per run: the final validation Dice (foreground mean, and per label) and the best seen, epochs
and optimiser steps; then mean +- sd (population sd over the seeds) per experiment. Runs go to
outputs/compare_hippocampus/<date>/<experiment>/seed<k>/ (metrics.json, config.yaml, ...).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# the split every comparison in the README used: 5 folds, data.split_seed 0, as seg-train made it before its
# split became seg-kfold's stratified one; kept so that fold 0 means the same 40 validation cases
SPLITS = REPO / "data" / "splits" / "hippocampus_compare.json"


def run(exp: str, seed: int, minutes: int | None, out: Path, extra: list[str]) -> dict:
    sel = [exp] if exp.startswith("plan=") else [f"experiment={exp}"]
    budget = []
    if minutes is not None:
        h, m = divmod(minutes, 60)
        budget = [f"trainer.max_time=00:{h:02d}:{m:02d}:00"]
    cmd = [
        str(REPO / ".venv" / "bin" / "seg-train"),
        *sel,
        f"seed={seed}",
        *budget,
        f"hydra.run.dir={out}",
        f"data.splits_file={SPLITS}",
        "~callbacks.rich_progress_bar",
        *extra,
    ]
    print("[compare]", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)
    return json.loads((out / "metrics.json").read_text())


def fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} +- {statistics.pstdev(values):.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiments", nargs="+", help="experiment names or plan=PLAN.yaml")
    ap.add_argument(
        "--minutes",
        type=int,
        default=None,
        help="trainer.max_time of every run (of every member, for an ensemble plan); default: each config's own",
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--extra", nargs="*", default=[], help="overrides added to every run")
    a = ap.parse_args()
    root = REPO / "outputs" / "compare_hippocampus" / datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    results: dict[str, list[dict]] = {}
    for exp in a.experiments:
        name = Path(exp.split("=", 1)[1]).stem if exp.startswith("plan=") else exp
        for seed in a.seeds:
            results.setdefault(name, []).append(run(exp, seed, a.minutes, root / name / f"seed{seed}", a.extra))
    print(f"\n{a.minutes or 'own'} min, seeds {a.seeds}, fold 0 ({root})")
    print(
        f"{'experiment':30s} {'val Dice':>18s} {'best':>18s} {'anterior':>18s} {'posterior':>18s} "
        f"{'epochs':>7s} {'steps':>7s} {'members':>7s}"
    )
    for name, ms in results.items():
        col = {
            k: fmt([m[k] for m in ms]) for k in ("val/dice", "val/dice_best", "val/dice_anterior", "val/dice_posterior")
        }
        print(
            f"{name:30s} {col['val/dice']:>18s} {col['val/dice_best']:>18s} {col['val/dice_anterior']:>18s} "
            f"{col['val/dice_posterior']:>18s} {statistics.mean(m['epochs'] for m in ms):7.0f} "
            f"{statistics.mean(m['global_step'] for m in ms):7.0f} "
            f"{(ms[0].get('ensemble') or {}).get('members', 1):7d}"
        )


if __name__ == "__main__":
    sys.exit(main())
