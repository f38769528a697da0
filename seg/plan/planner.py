"""``make_plan``: from a dataset's fingerprint and the cost model to a :class:`Plan` for a time budget.

The steps, in order (each one's reason goes into the plan file as a comment):

1. the data's own rules (``seg.plan.rules``): spacing, normalisation, pooling, the full patch (whole volumes
   when the median case fits), mirroring and patch sampling;
2. the probe search (``seg.plan.search``): precision, ensemble members, width and patch for the budget;
3. the budget itself: ``trainer.max_time`` (per member) ends the run, the learning-rate schedule runs on the
   fraction of the budget elapsed (``seg.lit.schedules``), validation at least every minute.

The plan file is written by ``seg.plan.planfile``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seg.config import UserError, parse_duration
from seg.data.datalist import load_dataset
from seg.nn.registry import list_nets, net_card, plannable_nets
from seg.plan import cost, rules, search
from seg.plan.fingerprint import compute_fingerprint
from seg.plan.search import MIN_STEPS, TRAIN_SHARE

log = logging.getLogger(__name__)

__all__ = ["MIN_STEPS", "TRAIN_SHARE", "Plan", "make_plan", "parse_budget"]


def parse_budget(text: str) -> int:
    """``--budget``: see :func:`seg.config.parse_duration`."""
    return parse_duration(text, "--budget")


@dataclass
class Plan:
    """What ``seg-plan`` decided for one dataset, network, budget and device (built with keywords)."""

    dataset: str
    net: str
    budget_s: int
    device: str
    measured: bool  # probes timed on the device (else estimated from FLOPs and the cost table)
    n_cases: int
    modalities: list[str]
    # the data's rules
    spacing: list[float]
    normalize: dict
    median_shape: list[int]
    flip_axes: list[int]
    pos_neg: list[int]
    # the probe search
    patch: list[int]
    levels: int
    base: int
    batch: int
    precision: str
    step_s: float
    steps: int
    members: int = 1  # ensemble members; budget_s is split evenly between them
    probes: list[dict] = field(default_factory=list)
    reasons: dict = field(default_factory=dict)

    @property
    def whole_volume(self) -> bool:
        return all(p >= m for p, m in zip(self.patch, self.median_shape))

    @property
    def folds(self) -> int:
        """K of the plan's k-fold split: 5, or one fold per case for a dataset of fewer cases."""
        return min(5, self.n_cases)

    @property
    def member_s(self) -> int:
        return self.budget_s // self.members

    @property
    def width(self) -> dict:
        """The network's width kwargs (its card's rule at ``base`` and ``levels``)."""
        return net_card(self.net).width_kwargs(self.base, self.levels)


def check_request(spec, net: str, root) -> None:
    """Refusals before any work: an unknown or unsizable net, a dataset of one case."""
    if net not in list_nets():
        raise UserError(f"seg-plan: --net {net!r} is not a registered network")
    if net not in plannable_nets():
        raise UserError(f"seg-plan: no width rule for net {net!r} (planned nets: {', '.join(plannable_nets())})")
    if len(spec.cases) < 2:
        raise UserError(f"seg-plan: {root}: {len(spec.cases)} case, a plan needs 2 at least (one to validate on)")


def data_rules(spec, cases: list[dict]) -> dict:
    """Step 1: spacing, normalisation, median shape, full patch, mirroring, sampling, with reasons."""
    spacing = rules.target_spacing([c["spacing"] for c in cases])
    shapes = rules.resampled_shapes([c["shape"] for c in cases], [c["spacing"] for c in cases], spacing)
    median = [int(x) for x in np.median(shapes, 0)]
    normalize = rules.normalization(spec.channel_names, [c["channels"] for c in cases])
    flip_axes, flip_why = rules.mirror_axes(cases)
    anisotropic = max(spacing) > rules.ANISOTROPY * min(spacing)
    fg = float(np.median([c["foreground_fraction"] or 0.0 for c in cases]))
    reasons = {
        "spacing": f"median spacing of {len(cases)} cases"
        + (" (coarse axis at its 10th percentile: anisotropic)" if anisotropic else ""),
        "normalize": (
            "CT: clip to the foreground's 0.5-99.5 percentiles, z-score with its mean/std"
            if normalize["mode"] == "ct"
            else f"{'/'.join(spec.channel_names)}: z-score per image"
            + (" over non-zero voxels (masked background)" if normalize["nonzero"] else "")
        ),
        "mirror": flip_why,
        "sampling": f"half the patches centred on foreground ({fg:.2%} of the median case)",
    }
    return {
        "spacing": spacing,
        "normalize": normalize,
        "median": median,
        "full": rules.round_patch(median),
        "flip_axes": flip_axes,
        "reasons": reasons,
    }


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
    check_request(spec, net, root)
    measured = device == "cpu" or (device == "cuda" and torch.cuda.is_available())
    memory_gb = _default_memory_gb(device, measured) if memory_gb is None else memory_gb
    fp = compute_fingerprint(spec, cache, progress=progress)
    d = data_rules(spec, fp["cases"])
    in_ch, out_ch = spec.in_channels, spec.out_channels

    def timer(cand: cost.Candidate, levels: int) -> float:
        if measured:
            return cost.measure_step(net, cand, levels, in_ch, out_ch, device)
        return cost.estimate_step(net, cand, levels, in_ch, out_ch, device)

    probes = search.Probes(timer, budget_s * TRAIN_SHARE, net)
    bf16 = cost.bf16_supported(device) or not measured
    c = search.search(probes, d["full"], budget_s, 2, bf16, measured, memory_gb, min_steps)
    reasons = {**d["reasons"], **c.reasons, **_choice_reasons(c, d["median"], budget_s, measured, min_steps)}
    return Plan(
        dataset=str(Path(root).resolve()),
        net=net,
        budget_s=budget_s,
        device=device,
        measured=measured,
        n_cases=len(fp["cases"]),
        modalities=list(spec.channel_names),
        spacing=d["spacing"],
        normalize=d["normalize"],
        median_shape=d["median"],
        flip_axes=d["flip_axes"],
        pos_neg=[1, 1],
        patch=list(c.patch),
        levels=c.levels,
        base=c.base,
        batch=2,
        precision=c.precision,
        step_s=round(c.step_s, 4),
        steps=c.steps,
        members=c.members,
        probes=probes.records,
        reasons=reasons,
    )


def _choice_reasons(c: search.Choice, median: list[int], budget_s: int, measured: bool, min_steps: int) -> dict:
    whole = all(p >= m for p, m in zip(c.patch, median))
    patch = f"median resampled case {'x'.join(map(str, median))} rounded up to 2^pools per axis" + (
        ": whole volumes (padded)"
        if whole
        else f", shrunk to {'x'.join(map(str, c.patch))} so that a width of at least {search.BASES[0]} buys "
        f"{min_steps} steps"
    )
    width = (
        f"{c.step_s:.3f} s/step {'measured' if measured else 'estimated'} -> {c.steps} steps in "
        f"{TRAIN_SHARE:.0%} of {budget_s // c.members // 60} min; the widest of {list(search.BASES)} "
        f"with >= {min_steps}"
    )
    return {"patch": patch, "width": width}


def _default_memory_gb(device: str, measured: bool) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_properties(0).total_memory / 1e9 * 0.8 if measured else 24.0
    try:
        kb = int(next(line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemAvailable")))
        return kb / 1e6 * 0.5
    except (OSError, StopIteration, ValueError):
        return 8.0


