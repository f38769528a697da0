"""seg-plan's cost: wall seconds and probes of one plan, the patch search probing every shrink step (the
baseline, the planner before the skip rule) against the planner as it is (patches whose step, scaled by
voxels from the last failed probe, is still over twice the allowed time are skipped unprobed). Same
process, alternating, fingerprint cached (its cost is printed once, apart).

    python scripts/bench_plan.py DATASET [--budget 6m] [--repeats 2]

``--cold REV``: a new user's first plan instead, everything it costs: the ``seg-plan`` command in a child
process with an empty probe memory and no fingerprint cache (imports, the dataset's read, every probe), its
wall seconds and peak RSS (``wait4``'s), at git revision REV (the named baseline, checked out in a temporary
worktree) and at this working tree, alternating.

    python scripts/bench_plan.py DATASET --cold 90988a4 [--budget 20m] [--repeats 2]
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import print_table, threads_note  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def cold_plan(tree: Path, dataset: str, budget: str, net: str) -> tuple[float, float, str]:
    """One cold ``seg-plan`` of the code at ``tree``: (wall s, peak RSS GB, the plan's patch/width line)."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(tree), "SEG_CACHE_DIR": tmp}
        argv = [sys.executable, "-m", "seg.cli.plan", dataset, "--budget", budget, "--net", net, "-o", f"{tmp}/p.yaml"]
        t0 = time.perf_counter()
        proc = subprocess.Popen([*argv, "-q"], env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"seg-plan failed at {tree}: {proc.stderr.read().decode()[-500:]}")
        plan = yaml.safe_load(Path(f"{tmp}/p.yaml").read_text())
    chosen = f"{'x'.join(map(str, plan['data']['patch_size']))} w{plan['model']['net']['filters'][0]}"
    return wall, usage.ru_maxrss / 1e6, chosen


def cold(a) -> None:
    """The ``--cold`` table (see the module docstring)."""
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "baseline"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(base), a.cold], check=True)
        try:
            rows = {f"baseline {a.cold}": [], "this tree": []}
            for _ in range(a.repeats):
                for name, tree in zip(rows, (base, REPO)):
                    rows[name].append(cold_plan(tree, str(Path(a.dataset).resolve()), a.budget, a.net))
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)], check=False)
    first = min(r[0] for r in rows[f"baseline {a.cold}"])
    table = [
        {
            "name": name,
            "s": ", ".join(f"{r[0]:.1f}" for r in runs),
            "ratio": min(r[0] for r in runs) / first,
            "gb": max(r[1] for r in runs),
            "chosen": "; ".join(r[2] for r in runs),
        }
        for name, runs in rows.items()
    ]
    print(threads_note())
    print_table(
        table,
        [
            ("name", "code", "s"),
            ("s", "cold plan s (each repeat)", "s"),
            ("ratio", "best / baseline's best", ".2f"),
            ("gb", "peak RSS GB", ".2f"),
            ("chosen", "plans chosen", "s"),
        ],
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("--budget", default="6m")
    ap.add_argument("--net", default="unet")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cold", metavar="REV", help="a cold seg-plan at git revision REV against this tree")
    a = ap.parse_args()
    if a.cold:
        return cold(a)
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
