"""How long each command takes to print its --help (the import cost a user pays before anything happens),
against a bare ``python -c pass`` in the same process loop: a table of seconds and of the ratio.

    python scripts/bench_cli.py [--repeats 3]

The target is under 1.5 s for every command on a 2-core machine (issue #29); a benchmark line, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ["train", "kfold", "plan", "predict", "eval", "export", "check_data", "synth"]


def seconds(args: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, check=False)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    base = seconds(["-c", "pass"], a.repeats)
    print(f"{'command':16s} {'--help s':>9s} {'x python':>9s}")
    print(f"{'python -c pass':16s} {base:9.2f} {1.0:9.1f}  (baseline)")
    for cmd in COMMANDS:
        t = seconds(["-m", f"seg.cli.{cmd}", "--help"], a.repeats)
        print(f"{'seg-' + cmd.replace('_', '-'):16s} {t:9.2f} {t / base:9.1f}{'  over 1.5 s' if t > 1.5 else ''}")


if __name__ == "__main__":
    main()
