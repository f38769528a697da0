"""seg-plan's cost: wall seconds and probes of one plan, the patch search probing every shrink step (the
baseline, the planner before the skip rule) against the planner as it is (patches whose step, scaled by
voxels from the last failed probe, is still over twice the allowed time are skipped unprobed). Same
process, alternating, fingerprint cached (its cost is printed once, apart).

    python scripts/bench_plan.py DATASET [--budget 6m] [--repeats 2]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import print_table, threads_note  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("--budget", default="6m")
    ap.add_argument("--net", default="unet")
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from seg.plan import planner, rules, search

    skip = search.next_patch

    def every(patch, *args):
        return rules.shrink_patch(patch)

    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "fp.json"
        t0 = time.perf_counter()
        from seg.data.datalist import load_dataset
        from seg.plan.fingerprint import compute_fingerprint

        compute_fingerprint(load_dataset(a.dataset), cache, progress=False)
        print(f"fingerprint (once, cached for every plan below): {time.perf_counter() - t0:.1f} s")
        rows = {"probe every shrink step (baseline)": [], "skip predictably slow patches": []}
        for _ in range(a.repeats):
            for name, fn in (("probe every shrink step (baseline)", every), ("skip predictably slow patches", skip)):
                search.next_patch = fn
                t0 = time.perf_counter()
                p = planner.make_plan(a.dataset, net=a.net, budget=a.budget, cache=cache, progress=False)
                rows[name].append((time.perf_counter() - t0, len(p.probes), p))
        search.next_patch = skip
    base = min(r[0] for r in rows["probe every shrink step (baseline)"])
    table = []
    for name, runs in rows.items():
        best = min(r[0] for r in runs)
        chosen = "; ".join(f"{'x'.join(map(str, r[2].patch))} w{r[2].base} {r[2].precision}" for r in runs)
        table.append(
            {
                "name": name,
                "s": best,
                "ratio": best / base,
                "probes": ", ".join(str(r[1]) for r in runs),
                "chosen": chosen,
            }
        )
    print(threads_note())
    print_table(
        table,
        [
            ("name", "patch search", "s"),
            ("s", "plan s (best)", ".1f"),
            ("ratio", "ratio", ".2f"),
            ("probes", "probes (each repeat)", "s"),
            ("chosen", "plans chosen (each repeat)", "s"),
        ],
    )


if __name__ == "__main__":
    main()
