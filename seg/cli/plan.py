"""``seg-plan DATASET [--net unet] [--budget 20m] [--device auto|cpu|cuda] [--devices N] [--resolution R] [-o PLAN]``.

Fingerprints the dataset, measures the cost of candidate widths and patches on this device (or estimates
them for one that is not present), and writes an experiment config that ``seg-train plan=PLAN.yaml`` and
``seg-kfold plan=PLAN.yaml`` take as is (command-line overrides win; ``--resolution cascade``: two, by
:func:`~seg.plan.planner.plan_cascade`). The runner is :class:`seg.plan.planner.Planner`."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from seg.cli.args import add_version


def main(argv: list[str] | None = None) -> int:
    raw = argparse.RawDescriptionHelpFormatter
    p = add_version(argparse.ArgumentParser(prog="seg-plan", description=__doc__, formatter_class=raw))
    p.add_argument("dataset", help="dataset folder (MSD or nnU-Net raw, with dataset.json)")
    p.add_argument("--net", default="unet", help="registered network to plan (default unet)")
    p.add_argument("--budget", default="20m", help="training time: 20m, 1h, 1h30m, DD:HH:MM:SS (default 20m)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: cuda when present")
    p.add_argument("--devices", type=int, default=1, help="GPUs to train on: more than 1 plans DDP (default 1)")
    p.add_argument("--memory-gb", type=float, help="memory a run may use (default: 80%% of the GPU, half the RAM)")
    p.add_argument("--min-steps", type=int, default=None, help="optimiser steps the budget must buy (default 4000)")
    p.add_argument("-o", "--output", help="plan file (default outputs/plans/<dataset>_<net>_<budget>.yaml)")
    p.add_argument("--fingerprint", help="fingerprint cache (default: beside the plan, <plan>.fingerprint.json)")
    p.add_argument(
        "--reprobe",
        action="store_true",
        help="measure every probe again instead of reading the figures kept from earlier plans on this machine",
    )
    p.add_argument(
        "--resolution", choices=["auto", "full", "low", "cascade"], default="auto",
        help="auto: by the rule; cascade: a low-resolution plan and a full-resolution one fed its probabilities",
    )  # fmt: skip
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    from seg.cli.common import command
    from seg.plan.machine import load_window

    with load_window():  # the planner samples the machine's load over the imports below, not in a second's sleep
        return command(_plan)(a, argv)


def _plan(a: argparse.Namespace, argv: list[str] | None) -> int:
    import torch

    from seg.cli.common import setup_logging
    from seg.io import write_text
    from seg.plan.planfile import check_outputs, dataset_as, plan_table, plan_yaml
    from seg.plan.planner import Planner, PlanRequest, parse_budget, plan_cascade
    from seg.plan.settings import SETTINGS

    setup_logging()
    name = Path(a.dataset).resolve().name
    out = Path(a.output or f"outputs/plans/{name}_{a.net}_{a.budget.replace(':', '-')}.yaml")
    cache = Path(a.fingerprint) if a.fingerprint else out.with_suffix(".fingerprint.json")
    outs = [out, out.with_name(f"{out.stem}_fullres{out.suffix}")][: 2 if a.resolution == "cascade" else 1]
    for o in outs:  # a cascade's second stage beside the first
        check_outputs(Path(a.dataset), o, cache)
    device = "cuda" if a.device == "auto" and torch.cuda.is_available() else "cpu" if a.device == "auto" else a.device
    request = PlanRequest(
        root=Path(a.dataset), net=a.net, budget_s=parse_budget(a.budget), device=device, devices=a.devices,
        memory_gb=a.memory_gb, min_steps=SETTINGS.min_steps if a.min_steps is None else a.min_steps,
        reprobe=a.reprobe, cache=cache, progress=not a.quiet, resolution=a.resolution,
    )  # fmt: skip
    run = f"outputs/{out.stem}_stage1"  # a cascade's first stage: a k-fold run, every fold's probabilities
    plans = plan_cascade(request, run) if a.resolution == "cascade" else (Planner(request).plan(),)
    command = "seg-plan " + " ".join(shlex.quote(x) for x in (sys.argv[1:] if argv is None else argv))
    for plan, path in zip(plans, outs):
        write_text(path, plan_yaml(plan, command, dataset_as(plan.dataset), path.stem))
        print(plan_table(plan))
    where = "" if device == "cpu" or torch.cuda.is_available() else f" (on a machine with {device.upper()})"
    if len(plans) == 2:
        print(f"\nplans: {out} (first stage), {outs[1]} (second stage)\nnext{where}: seg-kfold plan={out} "
              f"hydra.run.dir={run}\nthen: seg-kfold plan={outs[1]}  (data.previous_stage: {run})")  # fmt: skip
    else:
        print(f"\nplan: {out}\nnext{where}: seg-train plan={out}")
    return 0


_plan.prog = "seg-plan"

if __name__ == "__main__":
    sys.exit(main())
