"""``make_plan``: from a dataset's fingerprint and the cost model to an experiment config for a time budget.

The choice, in order (every step's reason goes into the YAML as a comment):

1. spacing, normalisation, pooling and the full patch from the data (``seg.plan.rules``);
2. precision: bf16 autocast when the device supports it and the probe measures it faster (>= 15 %);
3. width and patch from the cost model: starting from the full patch (whole volumes when the median case
   fits), the widest first-level width among 4, 8, 16, 32 whose step time still buys ``min_steps``
   optimiser steps in the training share of the budget; when even the thinnest cannot, the patch shrinks
   (nnU-Net's reduction) and the search repeats. ``min_steps`` = 4000 by default: on the hippocampus cases
   the planned 16..128 runs that reached 0.8945-0.8964 made 3214-4815 steps of batch 2 in 20 minutes, the
   hand-written 8..128 runs stopped at 2000 steps and 0.892; the timing probe moves by up to 40 % between
   sessions (width 32: 0.757 and 0.450 s/step), and 2000 let a 32..256 net in with 2269 steps;
4. ensemble members: when the budget buys more than one network can use (``round(S8 / MEMBER_STEPS_W8)``
   >= 2, S8 the optimiser steps of a width-8 net at the patch in the whole budget), it is split into that
   many members (at most ``MAX_MEMBERS``) trained one after the other with different seeds and bundled as
   their mean softmax; steps 3 (width, patch) then plan one member's share. Why: on the hippocampus cases
   one planned net gained nothing past ~20 minutes (6258 width-8 steps): 60 minutes of one wider net
   (32..256) scored 0.8914 on validation against 0.8945 +- 0.0020 for 20 minutes of 16..128;
5. the budget itself: ``trainer.max_time`` (per member) ends the run, the learning-rate schedule runs on
   the fraction of the budget elapsed (``seg.lit.schedules``), validation every tenth of the budget.
"""

from __future__ import annotations

import datetime
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seg.config import UserError
from seg.data.datalist import load_dataset
from seg.nn import list_nets
from seg.plan import cost, rules
from seg.plan.fingerprint import compute_fingerprint

log = logging.getLogger(__name__)
BASES = (4, 8, 16, 32)
MIN_STEPS = 4000
TRAIN_SHARE = 0.85  # of the budget: the rest goes to validation and checkpoints
# A real training step costs more than the probe's (data loading and augmentation, Lightning's loop,
# logging): on the demo's synthetic data two planned runs made 77 % of the steps the bare probe predicted.
STEP_OVERHEAD = 1.3
BF16_GAIN = 0.85  # bf16 is used when its step takes at most this fraction of fp32's
MEMBER_STEPS_W8 = 6000  # width-8 steps one member's training is worth (the 20-minute hippocampus plan's 6258)
MAX_MEMBERS = 5


def parse_budget(text: str) -> int:
    """``20m``, ``1h``, ``1h30m``, ``90s``, ``45`` (minutes) or ``DD:HH:MM:SS`` -> seconds."""
    t = str(text).strip().lower()
    if re.fullmatch(r"\d+:\d+:\d+:\d+", t):
        d, h, m, s = (int(x) for x in t.split(":"))
        return ((d * 24 + h) * 60 + m) * 60 + s
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return int(float(t) * 60)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", t)
    if not parts or "".join(f"{a}{b}" for a, b in parts) != t.replace(" ", ""):
        raise UserError(f"--budget {text!r}: give e.g. 20m, 1h, 1h30m, 90s or DD:HH:MM:SS")
    secs = sum(float(a) * {"h": 3600, "m": 60, "s": 1}[b] for a, b in parts)
    if secs <= 0:
        raise UserError(f"--budget {text!r} must be positive")
    return int(secs)


def as_max_time(seconds: int) -> str:
    d, rem = divmod(int(seconds), 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    return f"{d:02d}:{h:02d}:{m:02d}:{s:02d}"


@dataclass
class Plan:
    dataset: str
    net: str
    budget_s: int
    device: str
    measured: bool
    spacing: list[float]
    normalize: dict
    median_shape: list[int]
    patch: list[int]
    whole_volume: bool
    levels: int
    base: int
    batch: int
    precision: str
    step_s: float
    steps: int
    n_cases: int
    modalities: list[str]
    flip_axes: list[int] = field(default_factory=lambda: [0, 1, 2])
    pos_neg: list[int] = field(default_factory=lambda: [1, 1])
    probes: list[dict] = field(default_factory=list)
    reasons: dict = field(default_factory=dict)
    members: int = 1  # ensemble members; budget_s is split evenly between them

    @property
    def folds(self) -> int:
        """K of the plan's k-fold split: 5, or one fold per case for a dataset of fewer cases."""
        return min(5, self.n_cases)

    @property
    def member_s(self) -> int:
        return self.budget_s // self.members

    @property
    def filters(self) -> list[int]:
        return [min(self.base * 2**i, cost.FILTER_CAP) for i in range(self.levels)]


def make_plan(
    root: str | Path,
    net: str = "unet",
    budget: str | int = "20m",
    device: str = "cpu",
    memory_gb: float | None = None,
    cache: str | Path | None = None,
    min_steps: int = MIN_STEPS,
    progress: bool = True,
) -> Plan:
    """Plan ``net`` on the dataset at ``root`` for ``budget`` on ``device`` (see the module docstring)."""
    import torch

    spec = load_dataset(root)
    budget_s = budget if isinstance(budget, int) else parse_budget(budget)
    if net not in list_nets():
        raise UserError(f"seg-plan: --net {net!r} is not a registered network")
    cost.width_kwargs(net, 8, 3)  # refuses nets without a width rule now, before any work
    if len(spec.cases) < 2:
        raise UserError(f"seg-plan: {root}: {len(spec.cases)} case, a plan needs 2 at least (one to validate on)")
    measured = device == "cpu" or (device == "cuda" and torch.cuda.is_available())
    if memory_gb is None:
        memory_gb = _default_memory_gb(device, measured)
    fp = compute_fingerprint(spec, cache, progress=progress)
    cases = fp["cases"]
    spacing = rules.target_spacing([c["spacing"] for c in cases])
    shapes = rules.resampled_shapes([c["shape"] for c in cases], [c["spacing"] for c in cases], spacing)
    median = [int(x) for x in np.median(shapes, 0)]
    normalize = rules.normalization(spec.channel_names, [c["channels"] for c in cases])
    full = rules.round_patch(median)
    flip_axes, flip_why = rules.mirror_axes(cases)
    reasons = {
        "spacing": f"median spacing of {len(cases)} cases"
        + (
            " (coarse axis at its 10th percentile: anisotropic)"
            if max(spacing) > rules.ANISOTROPY * min(spacing)
            else ""
        ),
        "normalize": (
            "CT: clip to the foreground's 0.5-99.5 percentiles, z-score with its mean/std"
            if normalize["mode"] == "ct"
            else f"{'/'.join(spec.channel_names)}: z-score per image"
            + (" over non-zero voxels (masked background)" if normalize["nonzero"] else "")
        ),
    }
    reasons["mirror"] = flip_why
    fg = float(np.median([c["foreground_fraction"] or 0.0 for c in cases]))
    pos_neg = [1, 1]
    reasons["sampling"] = f"half the patches centred on foreground ({fg:.2%} of the median case)"
    in_ch, out_ch = spec.in_channels, spec.out_channels
    precisions = ["fp32"] + (["bf16"] if cost.bf16_supported(device) or not measured else [])
    train_s = budget_s * TRAIN_SHARE
    probes: list[dict] = []

    def step_time(base: int, patch: list[int], batch: int, precision: str, levels: int) -> float:
        cand = cost.Candidate(base, tuple(patch), batch, precision)
        if measured:
            t = cost.measure_step(net, cand, levels, in_ch, out_ch, device)
        else:
            t = cost.estimate_step(net, cand, levels, in_ch, out_ch, device)
        t *= STEP_OVERHEAD  # what a real training step costs beyond the bare probe
        probes.append(
            {
                "base": base,
                "patch": list(patch),
                "batch": batch,
                "precision": precision,
                "step_s": round(t, 4),
                "steps_in_budget": int(train_s / t),
            }
        )
        log.info(
            "probe %s base %d patch %s batch %d %s: %.3f s/step (overhead included)",
            net,
            base,
            patch,
            batch,
            precision,
            t,
        )
        return t

    batch = 2
    patch = full
    choice = None
    members = 0
    while choice is None:
        levels = max(3, 1 + max(rules.pools_per_axis(patch)))
        precision = "fp32"
        if "bf16" in precisions:
            t32 = step_time(8, patch, batch, "fp32", levels)
            t16 = step_time(8, patch, batch, "bf16", levels)
            precision = "bf16" if t16 <= BF16_GAIN * t32 else "fp32"
            reasons["precision"] = f"probe at width 8: bf16 {t16:.3f} s vs fp32 {t32:.3f} s per step" + (
                " (estimate)" if not measured else ""
            )
        if not members:  # once, at the full patch: how many networks the budget is worth
            if "bf16" in precisions:
                t8 = t16 if precision == "bf16" else t32
            else:
                t8 = step_time(8, patch, batch, precision, levels)
            s8 = int(train_s / t8)
            members = max(1, min(MAX_MEMBERS, round(s8 / MEMBER_STEPS_W8)))
            train_s = budget_s * TRAIN_SHARE / members
            reasons["members"] = (
                f"the budget buys {s8} steps of a width-8 net; {MEMBER_STEPS_W8} are one network's worth"
                + (
                    f" -> {members} members of {budget_s // members // 60} min, mean softmax"
                    if members > 1
                    else " -> one network"
                )
            )
        best = None
        for base in BASES:
            if cost.activation_gb(base, levels, patch, batch, precision) > memory_gb:
                break
            t = next(
                (
                    p["step_s"]
                    for p in probes
                    if p["base"] == base and p["patch"] == list(patch) and p["precision"] == precision
                ),
                None,
            ) or step_time(base, patch, batch, precision, levels)
            if train_s / t < min_steps:
                break
            best = (base, t)
        if best is not None:
            choice = (best[0], patch, levels, precision, best[1])
        elif _smallest(patch):
            t = step_time(BASES[0], patch, batch, precision, levels)
            choice = (BASES[0], patch, levels, precision, t)  # the smallest there is; the budget is short
        else:
            patch = _next_patch(patch, probes, precision, train_s / min_steps)
    base, patch, levels, precision, t = choice
    steps = int(train_s / t)
    for p in probes:  # the probes taken before the budget was split count one member's share too
        p["steps_in_budget"] = int(train_s / p["step_s"])
    whole = all(p >= m for p, m in zip(patch, median))
    reasons["patch"] = f"median resampled case {'x'.join(map(str, median))} rounded up to 2^pools per axis" + (
        ": whole volumes (padded)"
        if whole
        else f", shrunk to {'x'.join(map(str, patch))} so that a width of at least {BASES[0]} buys {min_steps} steps"
    )
    reasons["width"] = (
        f"{t:.3f} s/step {'measured' if measured else 'estimated'} -> {steps} steps in "
        f"{TRAIN_SHARE:.0%} of {budget_s // members // 60} min; the widest of {list(BASES)} with >= {min_steps}"
    )
    return Plan(
        str(Path(root).resolve()),
        net,
        budget_s,
        device,
        measured,
        spacing,
        normalize,
        median,
        list(patch),
        whole,
        levels,
        base,
        batch,
        precision,
        round(t, 4),
        steps,
        len(cases),
        list(spec.channel_names),
        flip_axes,
        pos_neg,
        probes,
        reasons,
        members,
    )


def _next_patch(patch: list[int], probes: list[dict], precision: str, need_s: float) -> list[int]:
    """The next patch worth a probe after ``patch`` failed: shrink once, then keep shrinking (unprobed) while
    the narrowest width's step measured at ``patch``, scaled by voxels, is still over twice the ``need_s``
    seconds a step may take. In the probes measured here step time falls no faster than the voxel count
    (slower on small patches, where fixed costs weigh more), so a skipped patch would have failed its probe
    too; the 2x margin leaves room for the probe's noise and keeps a measured probe at every patch near the
    line. Without it the whole-head T1 volumes walked 10 patch sizes at three probes each (89 s of probing
    for a 20-minute budget, 42 s with it: scripts/bench_plan.py)."""
    t = next(
        (
            p["step_s"]
            for p in probes
            if p["base"] == BASES[0] and p["patch"] == list(patch) and p["precision"] == precision
        ),
        None,
    )
    nxt = rules.shrink_patch(patch)
    while t is not None and not _smallest(nxt) and t * math.prod(nxt) / math.prod(patch) > 2 * need_s:
        nxt = rules.shrink_patch(nxt)
    return nxt


def _smallest(patch: list[int]) -> bool:
    """The floor of the patch search: it is planned there at the narrowest width, fast enough or not."""
    return min(patch) <= 2 * rules.MIN_FEATURE or math.prod(patch) <= 16**3


def _default_memory_gb(device: str, measured: bool) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_properties(0).total_memory / 1e9 * 0.8 if measured else 24.0
    try:
        kb = int(next(line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemAvailable")))
        return kb / 1e6 * 0.5
    except (OSError, StopIteration, ValueError):
        return 8.0


def plan_yaml(plan: Plan, command: str, root_as: str | None = None, name: str | None = None) -> str:
    """The plan as a Hydra experiment config (``# @package _global_``), every choice with its reason.

    ``root_as``: how ``data.root`` is written (default the dataset's absolute path), e.g.
    ``${paths.root_dir}/../shared/data/hippocampus`` for a plan committed with the project.
    ``name``: the run's ``task_name`` (outputs/<name>/runs/...), by default ``planned_<dataset>``; seg-plan
    passes the plan file's stem, as experiments are named after their file.
    """
    root = root_as or plan.dataset
    task = name or "planned_" + re.sub(r"[^0-9a-zA-Z]+", "_", Path(plan.dataset).name).strip("_").lower()
    val_every = as_max_time(max(60, plan.member_s // 10))
    fp = lambda xs: "[" + ", ".join(str(x) for x in xs) + "]"  # noqa: E731
    norm = ", ".join(
        f"{k}: {fp(v) if isinstance(v, list) else str(v).lower() if isinstance(v, bool) else v}"
        for k, v in plan.normalize.items()
    )
    est = "" if plan.measured else " (ESTIMATE: cost table, the device is not present)"
    lines = [
        "# @package _global_",
        f"# Generated by seg-plan on {datetime.date.today().isoformat()}; do not edit, re-plan instead:",
        f"#   {command}",
        f"# {plan.n_cases} cases of {root}, net {plan.net},",
        f"# budget {plan.budget_s // 60} min on {plan.device}{est}.",
        "# Train it: seg-train plan=THIS.yaml (or experiment=NAME when it lives in conf/experiment/);",
        "# command-line overrides win over the plan.",
        "defaults:",
        "  - override /data: default",
        f"  - override /model/net: {plan.net}",
        f"task_name: {task}",
        "planned:                    # what the planner saw and chose (for people; nothing reads it)",
        f"  dataset: {root}",
        f"  device: {plan.device}",
        f"  measured: {str(plan.measured).lower()}",
        f"  median_shape: {fp(plan.median_shape)}",
        f"  step_seconds: {plan.step_s}",
        f"  steps_in_budget: {plan.steps}" + ("   # per member" if plan.members > 1 else ""),
        f"  budget_minutes: {plan.budget_s // 60}",
        "data:",
        f"  root: {root}",
        f"  spacing: {fp(plan.spacing)}          # {plan.reasons['spacing']}",
        f"  normalize: {{{norm}}}   # {plan.reasons['normalize']}",
        f"  patch_size: {fp(plan.patch)}      # {plan.reasons['patch']}",
        f"  batch_size: {plan.batch if plan.whole_volume else plan.batch // 2}                # "
        + ("nnU-Net's 3D batch" if plan.whole_volume else "loaded cases per step"),
        f"  num_samples: {1 if plan.whole_volume else 2}               # "
        + (
            "one (whole-volume) patch per loaded case"
            if plan.whole_volume
            else f"patches per loaded case: {plan.batch} patches per step, the batch the probe timed"
        ),
        f"  pos_neg: {fp(plan.pos_neg)}             # {plan.reasons['sampling']}",
        *(
            [f"  num_folds: {plan.folds}                # {plan.n_cases} cases: one validation case per fold"]
            if plan.folds < 5
            else []
        ),
        "  augment:",
        f"    flip_axes: {fp(plan.flip_axes)}        # {plan.reasons['mirror']}",
        "model:",
        "  loss:",
        "    batch: true               # Dice over the whole batch (nnU-Net's 3D choice): empty patches still count",
        "  net:",
        f"    filters: {fp(plan.filters)}   # {plan.reasons['width']}"
        if plan.net in cost.UNET_FAMILY
        else f"    # width: {cost.width_kwargs(plan.net, plan.base, plan.levels)}   # {plan.reasons['width']}",
        "ensemble:",
        f"  members: {plan.members}                  # {plan.reasons['members']}",
        "trainer:",
        f'  max_time: "{as_max_time(plan.member_s)}"     # the budget'
        + (f" of each of the {plan.members} members" if plan.members > 1 else "")
        + " ends the run; the LR follows its fraction",
        "  max_epochs: 100000          # not the limit: the budget is",
        f"  precision: {'bf16-mixed' if plan.precision == 'bf16' else '32-true'}"
        f"          # {plan.reasons.get('precision', 'fp32: the device has no fast bf16')}",
        f'  val_check_interval: "{val_every}"   # validation by time: every tenth of the budget',
        "  check_val_every_n_epoch: 1",
        "callbacks:",
        "  early_stopping: null        # the budget ends a planned run (and Lightning 2.6's EarlyStopping fails",
        "                              # beside a time-based val_check_interval: it reads an attribute unset then)",
    ]
    if plan.net not in cost.UNET_FAMILY:
        kw = cost.width_kwargs(plan.net, plan.base, plan.levels)
        i = lines.index("  net:")
        lines[i + 1 : i + 2] = [
            f"    {k}: {fp(v) if isinstance(v, list) else v}   # {plan.reasons['width']}" for k, v in kw.items()
        ]
    return "\n".join(lines) + "\n"


def plan_table(plan: Plan) -> str:
    """A readable summary of the plan and the probes behind it."""
    rows = [
        ("dataset", f"{plan.dataset} ({plan.n_cases} cases, {'/'.join(plan.modalities)})"),
        ("net", plan.net),
        ("budget", f"{plan.budget_s // 60} min on {plan.device}" + ("" if plan.measured else " (estimated)")),
        ("ensemble", plan.reasons["members"]),
        ("spacing (mm)", "x".join(f"{s:g}" for s in plan.spacing)),
        ("median case (voxels)", "x".join(map(str, plan.median_shape))),
        ("normalisation", plan.reasons["normalize"]),
        ("patch", "x".join(map(str, plan.patch)) + (" (whole volumes)" if plan.whole_volume else "")),
        ("levels / filters", f"{plan.levels} / {plan.filters}"),
        ("batch", str(plan.batch)),
        (
            "folds",
            f"{plan.folds}" + (f" (one validation case per fold: {plan.n_cases} cases)" if plan.folds < 5 else ""),
        ),
        ("mirroring", plan.reasons["mirror"]),
        ("patch sampling", plan.reasons["sampling"]),
        ("precision", plan.precision),
        (
            "step",
            f"{plan.step_s:.3f} s -> {plan.steps} steps in the budget" + (" of a member" if plan.members > 1 else ""),
        ),
    ]
    w = max(len(k) for k, _ in rows)
    out = [f"{k.ljust(w)}  {v}" for k, v in rows]
    out.append("")
    out.append(
        "probes (s/step): "
        + "; ".join(
            f"w{p['base']} {'x'.join(map(str, p['patch']))} {p['precision']} {p['step_s']:.3f}" for p in plan.probes
        )
    )
    return "\n".join(out)
