"""Planned against made: seg-plan's forecast (the steps a member's training buys, and its range over the kept
timings of the step) set against the steps seg-train then made with the plan, on this machine. The baseline of
each row is its own forecast (made / planned = 1.00 is a forecast met); ``in range`` says whether the steps
made fall inside the forecast's range. One plan and one run at a time (a timing beside another job is that
job's as much as the machine's); each run is planned anew, so a second run of the same request reads the
probe memory and measures nothing.

    python scripts/bench_forecast.py DATASET [--budget 20m] [--runs 3] [--net unet]

Results go to docs/results.md ("Planned against made").
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import print_table, threads_note  # noqa: E402


def run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")


def made_steps(run_dir: Path) -> list[int]:
    """The optimiser steps each member made (one entry for a single network)."""
    m = json.loads((run_dir / "metrics.json").read_text())
    if "ensemble" in m:
        return [int(x["global_step"]) for x in m["ensemble"]["member_metrics"]]
    return [int(m["global_step"])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("--budget", default="20m")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--net", default="unet")
    a = ap.parse_args()
    bin_ = Path(sys.executable).parent
    rows = []
    with tempfile.TemporaryDirectory(prefix="seg_forecast_") as tmp:
        for i in range(a.runs):
            plan = Path(tmp) / f"plan_{i}.yaml"
            run([str(bin_ / "seg-plan"), a.dataset, "--budget", a.budget, "--net", a.net, "-o", str(plan), "-q"])
            planned = yaml.safe_load(plan.read_text())["planned"]
            out = Path(tmp) / f"run_{i}"
            run(
                [
                    str(bin_ / "seg-train"),
                    f"plan={plan}",
                    f"seed={i}",
                    f"hydra.run.dir={out}",
                    "~callbacks.rich_progress_bar",
                ]
            )
            lo, hi = planned["steps_range"]
            for member, made in enumerate(made_steps(out)):
                rows.append(
                    {
                        "run": f"{i}" + (f".{member}" if member else ""),
                        "planned": planned["steps_in_budget"],
                        "range": f"{lo}-{hi}",
                        "made": made,
                        "ratio": made / planned["steps_in_budget"],
                        "in_range": "yes" if lo <= made <= hi else "no",
                    }
                )
    print(threads_note())
    print(f"{a.dataset}, {a.net}, budget {a.budget}; baseline: each plan's own forecast")
    print_table(
        rows,
        [
            ("run", "run", "s"),
            ("planned", "planned steps", "d"),
            ("range", "forecast range", "s"),
            ("made", "made steps", "d"),
            ("ratio", "made/planned", ".2f"),
            ("in_range", "in range", "s"),
        ],
    )


if __name__ == "__main__":
    main()
