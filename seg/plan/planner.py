"""The planner: from a :class:`PlanRequest` (dataset, net, budget, device) to a :class:`Plan`.

The steps, in order (each one's reason goes into the plan file as a comment):

1. the data's own rules (``seg.plan.rules``): spacing, normalisation, pooling, the full patch (whole volumes
   when the median case fits), mirroring and patch sampling;
2. the data pipeline: ``device`` (the cached cases on the training device, augmentation on its tensors) when
   the cached training cases fit in ``device_cache_share`` of its memory, else ``workers`` reading the
   on-disk cache (``data.cache: disk``, :mod:`seg.data.diskcache`: a dataset larger than memory trains);
3. the search (``seg.plan.search``) over bare steps (``seg.plan.timing``, or ``seg.plan.estimate`` for an
   absent device): precision, memory format, ensemble members, width and patch;
4. on the present device, the training probe (``seg.plan.timing``): the chosen candidate's real step through
   the planned pipeline (plus ``loop_overhead_s``, Lightning's loop around it), the cost of validating a case
   and of caching one; the search runs again with what it measured until the choice holds (at most
   ``calibration_rounds`` training probes);
5. the budget (:class:`Budget`): start-up, periodic validation and the final validation are paid out of it, so
   that ``trainer.max_time`` plus the final validation ends within the budget; the learning-rate schedule
   runs on the fraction of ``max_time`` elapsed (``seg.lit.schedules``).

Every probe goes through the probe memory (``seg.plan.memory``): the same request on the same machine gives the
same plan. The steps a plan says the budget buys are a forecast: the median of the chosen training step's kept
timings, printed with the range those timings give (``docs/results.md`` sets forecasts against the steps runs
made: ``scripts/bench_forecast.py``). Every number here is in ``seg.plan.settings``; the plan file is
written by ``seg.plan.planfile``.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from seg.config import UserError, human_duration, parse_duration
from seg.data.datalist import load_dataset
from seg.nn.registry import list_nets, net_card, plannable_nets
from seg.plan import machine, rules
from seg.plan.estimate import estimate_step
from seg.plan.fingerprint import compute_fingerprint, cost_key
from seg.plan.memory import ProbeMemory
from seg.plan.records import Candidate, ProbeRow, TrainingCost
from seg.plan.search import (
    BareSteps,
    Choice,
    SearchInput,
    StepModel,
    estimated,
    levels_for,
    search,
    shape_text,
    smallest,
)
from seg.plan.settings import SETTINGS, Settings
from seg.plan.timing import Instruments

log = logging.getLogger(__name__)

__all__ = ["Budget", "Plan", "PlanRequest", "Planner", "make_plan", "parse_budget"]


def parse_budget(text: str, s: Settings = SETTINGS) -> int:
    """``--budget``: see :func:`seg.config.parse_duration`; at least ``min_budget_s``."""
    seconds = parse_duration(text, "--budget")
    if seconds < s.min_budget_s:
        raise UserError(f"--budget {text!r}: a plan needs at least {s.min_budget_s} s of training")
    return seconds


@dataclass(frozen=True)
class Budget:
    """How one member's share of the budget is spent: start-up, training with its periodic validations, and
    the final validation after ``trainer.max_time`` (Lightning validates when the time is up), so that the
    run ends within the budget. Without measurements (a device that is not present) training gets
    ``train_share`` of it.

    Args:
        budget_s: the whole budget.
        members: ensemble members (each gets ``budget_s / members``).
        val_s: one validation pass over the validation cases; None = unmeasured.
        startup_s: one run's start-up (caching its cases included).
        settings: the planner's settings.
    """

    budget_s: int
    members: int = 1
    val_s: float | None = None
    startup_s: float = SETTINGS.startup_s
    settings: Settings = SETTINGS
    val_cases: int | None = None  # the cases a pass validates where fewer than the fold's (limit_val_batches)

    @property
    def member_s(self) -> int:
        return self.budget_s // self.members

    @property
    def share_interval_s(self) -> int:
        """The interval at which periodic validation takes ``validation_share`` of the time (0: unmeasured)."""
        share = self.settings.validation_share
        return 0 if self.val_s is None else int(self.val_s * (1 - share) / share)

    @property
    def base_interval_s(self) -> int:
        """A tenth of the budget, at least a minute, and at least :attr:`share_interval_s`."""
        s = self.settings
        return max(s.validation_every_min_s, self.member_s // s.validation_parts, self.share_interval_s)

    @property
    def interval_s(self) -> int:
        """Training time between periodic validations: :attr:`base_interval_s`, stretched where a validation
        would still run at ``max_time`` (:func:`_no_straddle`)."""
        base = self.base_interval_s
        if self.val_s is None:
            return base
        return _no_straddle(base, self.val_s, self.max_time_s, self.settings.validation_margin_s)

    @property
    def max_time_s(self) -> int:
        if self.val_s is None:
            return self.member_s
        # the ensemble validates its members' mean twice at the end: each member pays its share of that
        ensemble = 2 * self.val_s if self.members > 1 else 0.0
        return max(self.settings.min_max_time_s, int(self.member_s - self.startup_s - self.val_s - ensemble))

    @property
    def validations(self) -> int:
        """Periodic validations inside ``max_time`` (each starts ``interval_s`` after the last one ended)."""
        return 0 if self.val_s is None else int(self.max_time_s // (self.interval_s + self.val_s))

    @property
    def train_s(self) -> float:
        if self.val_s is None:
            return self.member_s * self.settings.train_share
        return max(1.0, self.max_time_s - self.validations * self.val_s)


def _no_straddle(interval: float, val_s: float, max_time: int, margin: float) -> int:
    """The interval, stretched where needed so that no periodic validation runs past ``max_time``: Lightning
    starts one whenever the interval has passed, even seconds before the time is up, and validates once more
    after it (docs/results.md). The validations that end before ``max_time`` stay; the next would start
    ``margin`` after it."""
    n = int(max_time // (interval + val_s))
    while True:
        if (n + 1) * interval + n * val_s >= max_time + margin:
            return int(math.ceil(interval))
        stretched = math.ceil((max_time + margin - n * val_s) / (n + 1))
        if n * (stretched + val_s) <= max_time:
            return int(stretched)
        n -= 1


@dataclass(frozen=True)
class PlanRequest:
    """What a plan is asked for (``seg-plan``'s flags), built by keywords.

    Args:
        root: the dataset.
        net: a registered, plannable network.
        budget_s: the training budget (seconds; :func:`parse_budget` reads ``--budget``).
        device: "cpu" or "cuda"; a device that is not present is planned from estimates.
        devices: GPUs (more than one plans DDP).
        memory_gb: the memory a run may use (None: ``machine.memory_gb``).
        min_steps: the step floor a member's training must buy.
        reprobe: measure every probe again instead of reading the probe memory.
        cache: the fingerprint cache.
        progress: a progress bar while fingerprinting.
        resolution: "auto" (the low-resolution rule decides), "full" or "low"; "cascade" is two plans
            (:func:`plan_cascade`), each planned as "low" and "full".
        extra_channels: a cascade's second stage: the first stage's channels, which the pipeline's memory counts
            (the timed steps do not: they change the first convolution alone).
    """

    root: Path
    net: str = "unet"
    budget_s: int = 1200
    device: str = "cpu"
    devices: int = 1
    memory_gb: float | None = None
    min_steps: int = SETTINGS.min_steps
    reprobe: bool = False
    cache: Path | None = None
    progress: bool = True
    resolution: str = "auto"
    extra_channels: int = 0


RESOLUTIONS = ("auto", "full", "low", "cascade")
# the requests that ask for low resolution (a plan made with "cascade" is a cascade's first stage), as said
ASKED_LOW = {"low": "--resolution low", "cascade": "--resolution cascade, its first stage"}


@dataclass
class Plan:
    """What the planner decided for one request (built with keywords)."""

    dataset: str
    net: str
    budget: Budget
    device: str
    devices: int
    measured: bool  # probes timed on the device (else estimated from FLOPs and the cost table)
    n_cases: int
    folds: int  # k of the plan's k-fold split
    modalities: list[str]
    spacing: list[float]
    normalize: dict
    median_shape: list[int]
    resolution: str  # "full", or "low": the data's spacing times a factor (seg.plan.planner.Planner._resolution)
    data: dict  # the SegDataModule keywords the plan sets (patch, batch, pipeline, augmentation, ...)
    patch: list[int]
    levels: int
    base: int
    batch: int
    precision: str
    channels_last: bool
    step_s: float
    steps: int  # the forecast: the steps a member's training buys at the median kept step
    steps_range: tuple[int, int] = (0, 0)  # the forecast's range over the kept timings of the step
    timings: int = 0  # how many kept timings the forecast rests on (0: estimated)
    busy: bool = False  # other processes kept the CPU busy while probing (see seg.plan.machine)
    memory: str = ""  # which probes came from the probe memory (seg.plan.memory)
    probes: list[ProbeRow] = field(default_factory=list)
    reasons: dict = field(default_factory=dict)

    @property
    def budget_s(self) -> int:
        return self.budget.budget_s

    @property
    def members(self) -> int:
        return self.budget.members

    @property
    def member_s(self) -> int:
        return self.budget.member_s

    @property
    def whole_volume(self) -> bool:
        return _whole(self.patch, self.median_shape)

    @property
    def width(self) -> dict:
        """The network's width kwargs (its card's rule at ``base`` and ``levels``)."""
        return net_card(self.net).width_kwargs(self.base, self.levels)


@dataclass(frozen=True)
class DataRules:
    """Step 1's outcome: the data's spacing, normalisation, median and full patch, mirroring, with reasons."""

    spacing: list[float]
    normalize: dict
    median: list[int]
    full: list[int]
    flip_axes: list[int]
    voxels: list[int]  # each case's voxels after resampling
    channels: int
    reasons: dict
    scale: float = 1.0  # the spacing over the data's (> 1: low resolution)


def check_request(spec, r: PlanRequest, s: Settings = SETTINGS) -> None:
    """Refusals before any work: an unknown or unsizable net, a dataset of one case, a memory or device count that
    cannot be (a broken dataset is refused by its fingerprint, which checks each case in the same read)."""
    if r.memory_gb is not None and not r.memory_gb >= s.min_memory_gb:
        raise UserError(
            f"--memory-gb {r.memory_gb:g}: give the memory a run may use, in GB (at least {s.min_memory_gb:g}: "
            "a training process needs that much before its first batch)"
        )
    if r.devices < 1:
        raise UserError(f"--devices {r.devices}: give 1 or more")
    if r.resolution not in RESOLUTIONS:
        raise UserError(f"--resolution {r.resolution!r}: give one of {', '.join(RESOLUTIONS)}")
    if r.min_steps < 1:
        raise UserError(f"--min-steps {r.min_steps}: give the optimiser steps a member must make (1 or more)")
    if r.net not in list_nets():
        raise UserError(f"seg-plan: --net {r.net!r} is not a registered network")
    if r.net not in plannable_nets():
        raise UserError(f"seg-plan: no width rule for net {r.net!r} (planned nets: {', '.join(plannable_nets())})")
    if len(spec.cases) < 2:
        raise UserError(f"seg-plan: {r.root}: {len(spec.cases)} case, a plan needs 2 at least (one to validate on)")


def data_rules(spec, cases: list[dict], scale: float = 1.0) -> DataRules:
    """Step 1: spacing (the data's, times ``scale`` for a low-resolution configuration), normalisation, median
    shape, full patch, mirroring, sampling, with reasons."""
    spacing = [round(x * scale, 4) for x in rules.target_spacing([c["spacing"] for c in cases])]
    shapes = rules.resampled_shapes([c["shape"] for c in cases], [c["spacing"] for c in cases], spacing)
    median = [int(x) for x in np.median(shapes, 0)]
    normalize = rules.normalization(spec.channel_names, [c["channels"] for c in cases])
    flip_axes, flip_why = rules.mirror_axes(cases)
    anisotropic = max(spacing) > rules.ANISOTROPY * min(spacing)
    fg = float(np.median([c["foreground_fraction"] or 0.0 for c in cases]))
    reasons = {
        "spacing": f"median spacing of {len(cases)} cases"
        + (" (coarse axis at its 10th percentile: anisotropic)" if anisotropic else "")
        + (f", x {scale:g}: low resolution" if scale != 1 else ""),
        "normalize": (
            "CT: clip to the foreground's 0.5-99.5 percentiles, z-score with its mean/std"
            if normalize["mode"] == "ct"
            else f"{'/'.join(spec.channel_names)}: z-score per image"
            + (" over non-zero voxels (masked background)" if normalize["nonzero"] else "")
        ),
        "mirror": flip_why,
        "sampling": f"half the patches centred on foreground ({fg:.2%} of the median case)",
    }
    voxels = [int(np.prod(s)) for s in shapes]
    full = rules.round_patch(median)
    return DataRules(spacing, normalize, median, full, flip_axes, voxels, len(spec.channel_names), reasons, scale)


def smallest_label_voxels(cases: list[dict], spacing: list[float]) -> float | None:
    """The median object of the smallest label, in voxels of ``spacing`` (None without labelled voxels)."""
    per: dict[str, list[float]] = {}
    for c in cases:
        for k, lab in c["labels"].items():
            if lab["voxels"]:
                per.setdefault(k, []).append(lab["voxels"] * math.prod(c["spacing"]) / math.prod(spacing))
    return min(float(np.median(v)) for v in per.values()) if per else None


def _whole(patch: list[int], median: list[int]) -> bool:
    return all(p >= m for p, m in zip(patch, median))


def _near(cand: Candidate, measured: dict, within: float) -> Candidate | None:
    """The probed candidate nearest ``cand`` in batch voxels, of the same width, precision and layout, where
    their voxels are within ``within`` times each other (None where none is)."""
    same = [
        m for m in measured
        if (m.base, m.precision, m.channels_last) == (cand.base, cand.precision, cand.channels_last)
    ]  # fmt: skip
    v = cand.batch * math.prod(cand.patch)
    ratio = lambda m: max(v, m.batch * math.prod(m.patch)) / min(v, m.batch * math.prod(m.patch))  # noqa: E731
    best = min(same, key=ratio, default=None)
    return best if best is not None and ratio(best) <= within else None


def _at(d: DataRules) -> str:
    """``at 2.08x2.78x4.55 mm (2x the data's spacing)``."""
    return f"at {'x'.join(f'{x:g}' for x in d.spacing)} mm ({d.scale:g}x the data's spacing)"


def _short_why(c: Choice, low: DataRules, min_steps: int) -> str:
    """Why a plan short of the floor at the data's spacing takes the coarsest spacing (``_short``)."""
    return (
        f"low resolution: at the data's spacing the plan is short of the floor ({c.steps} of {min_steps} steps at "
        f"width {c.base}, {shape_text(c.patch)}); {_at(low)} a patch covers {low.scale**3:g}x the volume"
    )


def choose_pipeline(
    full: list[int], voxels: list[int], channels: int, memory_gb: float, device: str, share: float
) -> tuple[str, str]:
    """``device`` when the cached, pre-processed cases (image channels and label as float32, padded to the
    patch at least) fit in ``share`` of the run's memory, else ``workers``."""
    patch = math.prod(full)
    gb = sum(max(v, patch) for v in voxels) * (channels + 1) * 4 / 1e9
    where = "GPU" if device == "cuda" else "RAM"
    if gb <= share * memory_gb:
        why = f"the cached cases take {gb:.2f} GB of the {memory_gb:.0f} GB of {where} a run may use"
        return "device", why + ": cached on the device, augmented there, no worker processes"
    why = f"the cached cases would take {gb:.1f} GB, over {share:.0%} of the {memory_gb:.0f} GB"
    return "workers", why + " a run may use: worker processes reading the on-disk cache (data.cache=disk)"


class Planner:
    """Plans one :class:`PlanRequest` (single use: :meth:`plan` keeps what it found on the instance).

    Args:
        request: what is planned.
        instruments: how the machine is measured (``seg.plan.timing.Instruments``; tests pass modelled ones).
        settings: the planner's settings (``seg.plan.settings``).
    """

    def __init__(self, request: PlanRequest, instruments: Instruments | None = None, settings: Settings = SETTINGS):
        self.request, self.instruments, self.settings = request, instruments or Instruments(), settings

    # -- one builder each for the budget and the data config ------------------------------------------------
    def budget(self, members: int, cost: TrainingCost | None = None) -> Budget:
        """The budget of ``members`` members: unmeasured, or paying the training probe's validation and
        caching (one fold's validation cases, every case cached at start-up)."""
        r, s = self.request, self.settings
        if cost is None:
            return Budget(r.budget_s, members, settings=s)
        n = len(self.spec.cases)
        n_val = max(1, math.ceil(n / min(s.folds, n)))
        # a pass validates at most what validation_share of a member's budget pays for, one case at least
        fits = int(s.validation_share * r.budget_s / members / max(cost.val_case_s, 1e-9))
        used = max(1, min(n_val, fits))
        return Budget(
            r.budget_s,
            members,
            cost.val_case_s * used,
            s.startup_s + cost.cache_case_s * n,
            s,
            val_cases=used if used < n_val else None,
        )

    def data_config(self, c: Choice) -> dict:
        """The ``SegDataModule`` keywords of the plan (what the training probe builds and the plan file writes)."""
        d = self.rules
        whole = _whole(c.patch, d.median)
        # the paper's whole-volume mode, for the nets made for it, where the plan trains whole cases at low resolution
        resize = whole and d.scale > 1 and net_card(self.request.net).whole_volume
        return {
            **({"mode": "resize", "resize_shape": list(c.patch)} if resize else {}),
            "spacing": list(d.spacing),
            "normalize": dict(d.normalize),
            "patch_size": list(c.patch),
            "batch_size": c.batch if whole else c.batch // 2,
            "num_samples": 1 if whole else 2,
            "pos_neg": [1, 1],
            "augment": {"flip_axes": list(d.flip_axes)},
            "pipeline": self.pipeline,
            **({"cache": "disk"} if self.pipeline == "workers" else {}),
            "num_workers": 0 if self.pipeline == "device" else self.workers,
        }

    # -- the plan ---------------------------------------------------------------------------------------------
    def plan(self) -> Plan:
        """Steps 1-5 of the module docstring."""
        r, s = self.request, self.settings
        self.spec = load_dataset(r.root)
        check_request(self.spec, r, s)
        measured = machine.present(r.device)
        memory_gb = machine.memory_gb(r.device) if r.memory_gb is None else r.memory_gb
        load = self._load(measured)  # before the fingerprint's worker processes take every core
        fp = compute_fingerprint(self.spec, r.cache, progress=r.progress)
        self.fp_key, self.cases = cost_key(fp), fp["cases"]
        self.workers = max(1, min(s.max_workers, load.cores - 1))
        self.mem = ProbeMemory(r.device, busy=load.busy, reprobe=r.reprobe, on=measured)
        self.steps = BareSteps(self._timer(measured), r.net, s.monotone_slack)
        inp = self._search_input(measured, memory_gb)
        d, c, resolution_why, low = self._resolution(inp)
        c, acct, inp, timings, pipeline_why, how = self._settle(d, c, inp, memory_gb)
        if low is not None and _short(c, r.min_steps, s):  # short of the floor at full resolution: context first
            resolution_why = _short_why(c, low, r.min_steps)
            d, c = low, search(self.steps, replace(inp, full_patch=low.full))
            c, acct, inp, timings, pipeline_why, how = self._settle(d, c, inp, memory_gb)
        reasons = {**d.reasons, **c.reasons, "pipeline": pipeline_why}
        if resolution_why:
            reasons["resolution"] = resolution_why
        span = _span(acct.train_s, timings) if timings else (c.steps, c.steps)
        reasons.update(_choice_reasons(c, d.median, acct, how, r.min_steps, r.devices, span, len(timings), s))
        if "short" in reasons:
            log.warning("%s", reasons["short"])
        return Plan(
            dataset=str(Path(r.root).resolve()),
            net=r.net,
            budget=acct,
            device=r.device,
            devices=r.devices,
            measured=measured,
            n_cases=len(fp["cases"]),
            folds=min(s.folds, len(fp["cases"])),
            modalities=list(self.spec.channel_names),
            spacing=d.spacing,
            normalize=d.normalize,
            median_shape=d.median,
            resolution="full" if d.scale == 1 else "low",
            data=self.data_config(c),
            patch=list(c.patch),
            levels=c.levels,
            base=c.base,
            batch=c.batch,
            precision=c.precision,
            channels_last=c.channels_last,
            step_s=round(c.step_s, 4),
            steps=c.steps,
            steps_range=span,
            timings=len(timings),
            busy=load.busy,
            memory=self.mem.describe() if measured else "",
            probes=self.steps.rows(inp.model, acct.train_s),
            reasons=reasons,
        )

    def _settle(self, d: DataRules, c: Choice, inp: SearchInput, memory_gb: float):
        """The pipeline for ``d``, the budget and (where steps are timed) the training probes of ``c``: the choice,
        its budget, the last search input, the kept timings, the pipeline's reason and how its step was had."""
        r, s = self.request, self.settings
        self.rules, inp, timings = d, replace(inp, full_patch=d.full), []
        self.pipeline, pipeline_why = choose_pipeline(
            d.full, d.voxels, d.channels + r.extra_channels, memory_gb, r.device, s.device_cache_share
        )
        acct, how = self.budget(c.members), "estimated"
        if inp.measured:
            c, acct, inp, timings, how = self._calibrate(c, inp)
        return c, acct, inp, timings, pipeline_why, how

    def _search_input(self, measured: bool, memory_gb: float) -> SearchInput:
        """The search's inputs before the training probe (its ``full_patch`` is set per resolution)."""
        r, s = self.request, self.settings
        return SearchInput(
            full_patch=[], budget_s=r.budget_s, bf16=self.instruments.bf16(r.device) or not measured,
            measured=measured, memory_gb=memory_gb, min_steps=r.min_steps, train_time=lambda m: self.budget(m).train_s,
            model=StepModel(None, s.step_overhead), settings=s, estimate=self._estimator(measured),
        )  # fmt: skip

    def _estimator(self, measured: bool):
        """The cost model's bare-step estimate (FLOPs at the cost table's rate) where steps are timed; None where
        they are estimates already."""
        if not measured:
            return None
        r, spec = self.request, self.spec
        return lambda cand, levels: estimate_step(r.net, cand, levels, spec.in_channels, spec.out_channels, r.device)

    def _resolution(self, inp: SearchInput) -> tuple[DataRules, Choice, str | None, DataRules | None]:
        """Full or low resolution (docs/planning.md, "Resolution"): the data's spacing, unless the narrowest width
        cannot train whole cases there in the budget and a coarser spacing (``lowres_factors``) can, or the plan at
        the data's spacing turns out short of the step floor (then the coarsest factor, in patches), without
        making the smallest label's median object smaller than ``lowres_min_label_voxels``. Returns the data
        rules, the choice, why (None where the data's spacing trains whole cases) and, for a full-resolution
        choice, the coarsest spacing that ``plan`` takes if its training probes leave it short (or None)."""
        r = self.request
        full = data_rules(self.spec, self.cases)
        finp = replace(inp, full_patch=full.full)
        if r.resolution == "full":
            return full, search(self.steps, finp), None, None
        narrow, need = finp.narrowest(full.full), finp.floor_step_s
        t_full = self._estimated(finp, narrow)  # the machine's rate is measured against the data's spacing
        if r.resolution == "auto" and t_full <= need:
            return full, search(self.steps, finp), None, None
        asked = ASKED_LOW.get(r.resolution)  # low resolution asked for: the flag's words in the reason
        low = self._lowres(finp)
        if isinstance(low, str):
            return full, search(self.steps, finp), low, None
        dl, fits = low
        at = _at(dl)
        if fits or asked:
            cl = search(self.steps, replace(finp, full_patch=dl.full))
            whole = _whole(cl.patch, dl.median)
            if asked or whole:
                what = "whole cases" if whole else "patches (no spacing up to the coarsest trains whole cases)"
                why = (
                    f"low resolution: at the data's spacing a width-{narrow.base} step on whole cases "
                    f"({shape_text(full.full)}) takes {t_full:.2f} s, over the {need:.3f} s the floor allows; "
                    f"{at} {what} at width {cl.base}"
                )
                return dl, cl, why + (f" (asked: {asked})" if asked else ""), None
            why = f"full resolution: {at} the plan would be {shape_text(cl.patch)}, not whole cases"
        else:
            why = (
                f"full resolution: no spacing up to {dl.scale:g}x the data's trains whole cases at width {narrow.base}"
            )
        return full, search(self.steps, finp), why, dl  # dl: where the plan at full resolution is short of the floor

    def _lowres(self, inp: SearchInput) -> tuple[DataRules, bool] | str:
        """The low-resolution spacing: the first of ``lowres_factors`` at which the cost model puts the narrowest
        width on whole resampled cases within the step the floor allows (with True), else the coarsest (with
        False); or why there is none (a factor would shrink the smallest label's median object below
        ``lowres_min_label_voxels``)."""
        s, need = self.settings, inp.floor_step_s
        for f in s.lowres_factors:
            dl = data_rules(self.spec, self.cases, scale=f)
            small = smallest_label_voxels(self.cases, dl.spacing)
            if small is not None and small < s.lowres_min_label_voxels:
                return (
                    f"full resolution: at {f:g}x the data's spacing the smallest label's median object would have "
                    f"{small:.0f} voxels (fewer than {s.lowres_min_label_voxels})"
                )
            if self._estimated(inp, inp.narrowest(dl.full)) <= need:
                return dl, True
        return dl, False

    def _estimated(self, inp: SearchInput, cand: Candidate) -> float:
        """A real step of ``cand`` from the cost model (measured rate) or, for an absent device, the estimate."""
        if inp.estimate is not None:
            return estimated(self.steps, inp, cand)
        return inp.model.real(self.steps.timer(cand, levels_for(cand.patch)), cand)

    def _load(self, measured: bool) -> machine.Load:
        """The other processes' load on a probed CPU (said once when busy); none on a GPU or an estimate."""
        if measured and self.request.device == "cpu":
            load = self.instruments.load()
        else:
            load = machine.Load(machine.available_cores(), 0.0)
        if load.busy:
            log.warning("%s", load.warning())
        return load

    def _timer(self, measured: bool):
        r, spec = self.request, self.spec
        in_ch, out_ch = spec.in_channels, spec.out_channels

        def timer(cand: Candidate, levels: int) -> float:
            if measured:
                key = _bare_key(r.net, levels, (in_ch, out_ch), cand)
                bare = self.instruments.bare_step
                return self.mem.figure(key, lambda: bare(r.net, cand, levels, in_ch, out_ch, r.device))
            return estimate_step(r.net, cand, levels, in_ch, out_ch, r.device)

        return timer

    def _train_key(self, c: Choice) -> str:
        data = json.dumps(self.data_config(c), sort_keys=True, default=str)
        return f"train {self.request.net} levels {c.levels} {_cand_key(c.candidate)} fingerprint {self.fp_key} " + data

    def _training_cost(self, c: Choice) -> TrainingCost:
        """The training probe of ``c``, through the probe memory (keyed by the cases' shapes and ``data``)."""
        r, spec = self.request, self.spec
        ids, channels, data = (
            [case.case_id for case in spec.cases],
            (spec.in_channels, spec.out_channels),
            self.data_config(c),
        )

        def measure() -> dict:
            tc = self.instruments.training_step(
                str(r.root), ids, data, r.net, c.candidate, c.levels, channels, r.device
            )
            return vars(tc)

        return TrainingCost(**self.mem.record(self._train_key(c), measure))

    def _calibrate(self, c: Choice, inp: SearchInput) -> tuple[Choice, Budget, SearchInput, list[float], str]:
        """Step 4: the training probe at the choice, the search again with the data cost and budget it
        measured, until the choice holds, comes back to one measured already, or lands near one (its batch
        voxels within ``calibration_near`` of a probed candidate's of the same width, precision and layout: its
        step is then its bare step plus the neighbour's data cost, a step's or, for a larger patch, scaled by
        voxels, where that still buys the floor; else it is probed), at most ``calibration_rounds`` probes.
        Returns the final choice (its step the training probe's, Lightning's loop added, or the model's), its
        budget, the search input of the last round, the kept timings of its step (the forecast's range) and
        how the step was had."""
        s = self.settings
        measured: dict = {}  # candidate -> its TrainingCost
        extras: dict = {}  # candidate -> its data cost a step (the real step, the loop's included, less the bare)
        near = None  # the probed candidate that stands for the choice (``_near``), if one does
        for _ in range(s.calibration_rounds):
            tc = measured[c.candidate] = self._training_cost(c)
            extra = extras[c.candidate] = max(0.0, tc.step_s + s.loop_overhead_s - self._same_hour_bare(c))
            acct = self.budget(1, tc)
            inp = replace(
                inp,
                model=StepModel(extra / (c.batch * math.prod(c.patch)), s.step_overhead),
                train_time=lambda m, a=acct: replace(a, members=m).train_s,
            )
            c = search(self.steps, inp)
            near = None if c.candidate in measured else _near(c.candidate, measured, s.calibration_near)
            if c.candidate in measured or near is not None:
                break  # it holds, came back to a choice measured already, or lies near one
        if near is not None:  # the neighbour's data cost, never less than its own a step (nor a voxel)
            tc, v = measured[near], math.prod(c.candidate.patch) / math.prod(near.patch)
            step = self.steps.bare(c.candidate, c.levels) + extras[near] * max(1.0, v)
            acct = self.budget(c.members, replace(tc, step_s=step - s.loop_overhead_s))
            if acct.train_s / step >= self.request.min_steps or _short(c, self.request.min_steps, s):
                how = f"modelled from the training probe at {shape_text(near.patch)} (its data cost)"
                return replace(c, step_s=step, train_s=acct.train_s), acct, inp, [], how
        if c.candidate not in measured:  # the rounds ran out on a new choice: measure it for its own step
            measured[c.candidate] = self._training_cost(c)
        tc = measured[c.candidate]
        acct = self.budget(c.members, tc)
        timings = [float(v["step_s"]) + s.loop_overhead_s for v in self.mem.values(self._train_key(c))]
        how = "measured with its data"
        return replace(c, step_s=tc.step_s + s.loop_overhead_s, train_s=acct.train_s), acct, inp, timings, how

    def _same_hour_bare(self, c: Choice) -> float:
        """The bare step to set against a training probe: the search's figure, unless the training probe was
        measured now and the bare figure read from the memory (a new dataset on a known machine): two hours'
        speeds would meet and the data cost, their difference, could read below 0, so the bare step is timed
        now too (kept nowhere)."""
        r, spec = self.request, self.spec
        channels = (spec.in_channels, spec.out_channels)
        kept = self.mem.was_read(_bare_key(r.net, c.levels, channels, c.candidate))
        if kept and not self.mem.was_read(self._train_key(c)):
            return self.instruments.bare_step(r.net, c.candidate, c.levels, *channels, r.device)
        return self.steps.bare(c.candidate, c.levels)


def make_plan(
    root: str | Path,
    *,
    net: str = "unet",
    budget: str | int = "20m",
    device: str = "cpu",
    instruments: Instruments | None = None,
    settings: Settings = SETTINGS,
    **request,
) -> Plan:
    """Plan ``net`` on ``root`` for ``budget`` (``"20m"`` or seconds) on ``device``; other keywords are
    :class:`PlanRequest`'s."""
    budget_s = budget if isinstance(budget, int) else parse_budget(budget, settings)
    req = PlanRequest(root=Path(root), net=net, budget_s=budget_s, device=device, **request)
    return Planner(req, instruments, settings).plan()


def plan_cascade(
    request: PlanRequest, first_run: str, instruments: Instruments | None = None, settings: Settings = SETTINGS
) -> tuple[Plan, Plan]:
    """``--resolution cascade`` (nnU-Net's ``3d_lowres`` then ``3d_cascade_fullres``): the first stage, planned as
    ``--resolution low`` and run as a k-fold into ``first_run`` (its out-of-fold probabilities are the second
    stage's input), and the second, planned as ``--resolution full`` with ``data.previous_stage: first_run``.
    Each stage gets the whole budget a run. One line where the data has no low-resolution configuration: a
    cascade of two full-resolution stages would only cost twice."""
    low = Planner(replace(request, resolution="cascade"), instruments, settings).plan()  # the first stage
    if low.resolution != "low":
        why = low.reasons.get("resolution", "its spacing trains whole cases")
        raise UserError(f"{low.dataset}: no cascade: {why}; plan --resolution full")
    extra = len(load_dataset(request.root).labels) - 1  # the first stage's foreground probabilities
    full = Planner(replace(request, resolution="full", extra_channels=extra), instruments, settings).plan()
    full.data["previous_stage"] = first_run
    full.reasons["resolution"] = (
        f"a cascade's second stage: full resolution, fed the first stage's probabilities "
        f"({'x'.join(f'{x:g}' for x in low.spacing)} mm, {'whole cases' if low.whole_volume else 'patches'})"
    )
    return low, full


def _short(c: Choice, min_steps: int, s: Settings) -> bool:
    """The search ended at its floor (the narrowest width, the smallest patch) and the budget is short of the
    step floor there."""
    return c.steps < min_steps and c.base == s.bases[0] and smallest(c.patch, s)


def smallest_budget(acct: Budget, step_s: float, min_steps: int) -> int:
    """The smallest whole-minute budget whose members' training buys ``min_steps`` steps of ``step_s``."""
    minutes = max(1, acct.budget_s // 60)
    while replace(acct, budget_s=minutes * 60).train_s < min_steps * step_s and minutes < 7 * 24 * 60:
        minutes += 1
    return minutes * 60


def _span(train_s: float, timings: list[float]) -> tuple[int, int]:
    """The steps ``train_s`` buys at the slowest and the fastest of ``timings``."""
    return int(train_s / max(timings)), int(train_s / min(timings))


def _bare_key(net: str, levels: int, channels: tuple[int, int], cand: Candidate) -> str:
    return f"bare {net} levels {levels} channels {channels[0]}/{channels[1]} {_cand_key(cand)}"


def _cand_key(cand: Candidate) -> str:
    layout = "channels-last" if cand.channels_last else "channels-first"
    return f"width {cand.base} patch {list(cand.patch)} batch {cand.batch} {cand.precision} {layout}"


def _forecast(c: Choice, span: tuple[int, int], timings: int) -> str:
    """``4139 steps (3600-4600 over 5 timings)``: the forecast and its range over the kept timings."""
    if timings == 0:
        return f"{c.steps} steps"
    if timings == 1:
        return f"{c.steps} steps (one timing)"
    return f"{c.steps} steps ({span[0]}-{span[1]} over {timings} timings)"


def _choice_reasons(
    c: Choice, median: list[int], acct: Budget, how: str, min_steps: int, devices: int,
    span: tuple[int, int], timings: int, s: Settings,
) -> dict:  # fmt: skip
    whole, short = _whole(c.patch, median), _short(c, min_steps, s)
    patch = f"median resampled case {shape_text(median)} rounded up to 2^pools per axis" + (
        ": whole volumes (padded)"
        if whole
        else f", shrunk to {shape_text(c.patch)}, the smallest planned (short of the {min_steps}-step floor)"
        if short
        else f", shrunk to {shape_text(c.patch)} so that a width of at least {s.bases[0]} buys {min_steps} steps"
    )
    spent = (
        f"{acct.train_s / 60:.1f} of a member's {acct.member_s / 60:.1f} min train: the rest starts the run "
        f"({acct.startup_s:.0f} s) and validates it {acct.validations + 1} times ({acct.val_s:.1f} s each"
        + (f", {acct.val_cases} cases" if acct.val_cases else "")
        + ")"
        if acct.val_s is not None
        else f"{s.train_share:.0%} of a member's {human_duration(acct.member_s)} train (estimate)"
    )
    width = f"{c.step_s:.3f} s/step {how} -> {_forecast(c, span, timings)}; {spent}; " + (
        f"the narrowest of {list(s.bases)}: none buys {min_steps}"
        if short
        else f"the widest of {list(s.bases)} with >= {min_steps}"
    )
    out = {"patch": patch, "width": width}
    if short:
        need = smallest_budget(acct, c.step_s, min_steps) // 60
        out["short"] = (
            f"the budget buys {c.steps} steps, under the {min_steps}-step floor even at width {c.base} and "
            f"patch {shape_text(c.patch)}: {need} min buys it (seg-plan --budget {need}m)"
        )
    if devices > 1:
        out["devices"] = (
            f"DDP over {devices} GPUs: each trains on its share of the cases with the planned batch "
            f"(an effective batch {devices}x as large); steps planned for one GPU (the gradient exchange is not probed)"
        )
    return out
