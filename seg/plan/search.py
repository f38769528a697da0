"""The search: which precision and memory format, how many ensemble members, how wide a network and how large a
patch the budget buys, decided from bare steps (timed, or estimated for an absent device). One function per
decision, as nnU-Net's planner has one step per decision; :func:`search` runs them in order.

0. the cost model first (:func:`screen`): a patch whose narrowest step, estimated from its FLOPs and this
   machine's measured rate, is over ``skip_margin`` times the step the floor allows is skipped unprobed
   (``shrink_margin`` times at or below the rate's patch on a device without bf16);
1. precision, once, at the first patch searched: bf16 autocast when the device supports it and its step takes at
   most ``bf16_gain`` of fp32's; channels-last 3D activations when their step takes at most
   ``channels_last_gain`` of channels-first's;
2. members: when the budget buys more than one network can use (``round(S8 / member_steps_w8)`` >= 2, S8 the
   optimiser steps of a width-8 net at the full patch in the whole budget), it is split into that many members
   (at most ``max_members``), each planned for its share;
3. width: the widest of ``bases`` whose step still buys ``min_steps`` optimiser steps in a member's training
   time (and whose activations fit the memory);
4. patch: when even the narrowest width cannot, the patch shrinks (nnU-Net's reduction, ``rules.shrink_patch``)
   and 3 and 4 repeat at the chosen precision; patches whose step, scaled by voxels from the last probe, is over
   ``shrink_margin`` times the allowed one are skipped unprobed (a step falls no faster than its voxels: the
   margin is the probes' noise).

A bare step is the median of its timed steps (``bare_reps``, or ``bare_min_reps`` that agree); a thinner net or a
smaller patch measured slower than a wider or larger one is measured again, and then taken as no slower (noise,
not the machine). A real training step costs more than the bare one (its batch is loaded, augmented and moved;
the loop has its own cost): :class:`StepModel` adds the training probe's measured data cost per voxel of the
batch, or, before it has measured one (and for an absent device), scales the bare step by ``step_overhead``.
Every value named here is in ``seg.plan.settings``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from seg.plan import rules
from seg.plan.estimate import activation_gb
from seg.plan.records import BareStep, Candidate, ProbeRow
from seg.plan.settings import SETTINGS, Settings

log = logging.getLogger(__name__)

# (candidate, levels) -> seconds of one bare training step (timed, or estimated for an absent device)
StepTimer = Callable[[Candidate, int], float]


@dataclass(frozen=True)
class StepModel:
    """A real training step from a bare one: plus ``data_s_per_voxel`` per voxel of the batch (the training
    probe's measure), or times ``step_overhead`` where that is not measured (None)."""

    data_s_per_voxel: float | None = None
    step_overhead: float = SETTINGS.step_overhead

    def real(self, bare_s: float, cand: Candidate) -> float:
        if self.data_s_per_voxel is None:
            return bare_s * self.step_overhead
        return bare_s + self.data_s_per_voxel * cand.batch * math.prod(cand.patch)


@dataclass
class BareSteps:
    """Every bare step the search takes, each candidate timed once (twice when it broke monotonicity).

    Args:
        timer: times (or estimates) one bare step of a candidate.
        label: the net's name, for the log.
        monotone_slack: see the module docstring.
    """

    timer: StepTimer
    label: str = ""
    monotone_slack: float = SETTINGS.monotone_slack
    records: list[BareStep] = field(default_factory=list)
    remeasured: int = 0
    rate: float | None = None  # a timed bare step over its FLOP estimate (see machine_rate)
    rate_patch: tuple[int, ...] = ()  # the patch the rate was timed at
    screened: dict = field(default_factory=dict)  # full patch -> screen's answer, taken once per plan

    def find(self, cand: Candidate) -> BareStep | None:
        key = (cand.base, tuple(cand.patch), cand.precision, cand.channels_last)
        return next((r for r in self.records if _key(r.candidate) == key), None)

    def bare(self, cand: Candidate, levels: int) -> float:
        """The bare step of ``cand``: recorded, else timed now (and checked against its neighbours)."""
        rec = self.find(cand)
        if rec is None:
            rec = BareStep(replace(cand, patch=tuple(cand.patch)), levels, self.timer(cand, levels))
            self.records.append(rec)
            layout = "" if cand.channels_last else " channels-first"
            log.info(
                "bare step %s base %d patch %s %s: %.4f s",
                *(self.label, cand.base, list(cand.patch), cand.precision + layout, rec.bare_s),
            )
            self._monotone(rec)
        return rec.bare_s

    def _monotone(self, new: BareStep) -> None:
        """A thinner net, or a smaller patch, is never slower: a record that says otherwise is timed again
        (both sides), and if it still does, the smaller one is taken as fast as the larger."""
        a = new.candidate
        for old in self.records:
            b = old.candidate
            if old is new or (b.precision, b.channels_last) != (a.precision, a.channels_last):
                continue
            if b.patch == a.patch and b.base != a.base:
                small, large = sorted((old, new), key=lambda r: r.candidate.base)
            elif b.base == a.base and math.prod(b.patch) != math.prod(a.patch):
                small, large = sorted((old, new), key=lambda r: math.prod(r.candidate.patch))
            else:
                continue
            if small.bare_s > large.bare_s * self.monotone_slack:
                self.remeasured += 1
                for r in (small, large):
                    r.bare_s = self.timer(r.candidate, r.levels)
                small.bare_s = min(small.bare_s, large.bare_s)

    def rows(self, model: StepModel, train_s: float) -> list[ProbeRow]:
        """The records as the plan file lists them: real step seconds and the steps they buy in ``train_s``."""
        out = []
        for r in self.records:
            c, t = r.candidate, model.real(r.bare_s, r.candidate)
            out.append(
                ProbeRow(
                    c.base,
                    list(c.patch),
                    c.batch,
                    c.precision,
                    c.channels_last,
                    round(t, 4),
                    int(train_s / t),
                    round(r.bare_s, 4),
                )
            )
        return out


def _key(c: Candidate) -> tuple:
    return c.base, tuple(c.patch), c.precision, c.channels_last


@dataclass
class Choice:
    """What the search decided, with the reason of each decision."""

    base: int
    patch: list[int]
    levels: int
    precision: str
    channels_last: bool
    step_s: float  # a real training step (overhead included)
    members: int
    train_s: float  # seconds of training of one member
    batch: int = SETTINGS.batch
    reasons: dict = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return int(self.train_s / self.step_s)

    @property
    def candidate(self) -> Candidate:
        return Candidate(self.base, tuple(self.patch), self.batch, self.precision, self.channels_last)


@dataclass(frozen=True)
class SearchInput:
    """What the search decides from (built by the planner; each calibration round replaces ``model`` and
    ``train_time``).

    Args:
        full_patch: the data's full patch (the median case, rounded).
        budget_s: the whole budget.
        bf16: whether bf16 is worth probing on the device.
        measured: whether the steps are timed (else estimated).
        memory_gb: the memory a run may use.
        min_steps: the step floor.
        train_time: ``train_time(m)``: the seconds of training each of ``m`` members gets from the budget.
        model: how a real step follows from a bare one.
        settings: the planner's settings.
        estimate: a bare step's FLOP estimate (``seg.plan.estimate``) for the cost model; None: no screening.
    """

    full_patch: list[int]
    budget_s: int
    bf16: bool
    measured: bool
    memory_gb: float
    min_steps: int
    train_time: Callable[[int], float]
    model: StepModel = StepModel()
    settings: Settings = SETTINGS
    estimate: StepTimer | None = None

    @property
    def floor_step_s(self) -> float:
        """The step that buys ``min_steps`` if one network had the whole budget's training time."""
        return self.train_time(1) / self.min_steps

    def narrowest(self, patch: Sequence[int], precision: str | None = None) -> Candidate:
        """The narrowest width at ``patch``, channels-last, at ``precision`` (default: the best the device has)."""
        s = self.settings
        return Candidate(s.bases[0], tuple(patch), s.batch, precision or ("bf16" if self.bf16 else "fp32"), True)


def shape_text(shape: Sequence[int]) -> str:
    """``40x40x48``."""
    return "x".join(map(str, shape))


def levels_for(patch: Sequence[int]) -> int:
    """A U-Net deep enough for the patch's pooling (at least 3 levels)."""
    return max(3, 1 + max(rules.pools_per_axis(patch)))


def choose_precision(steps: BareSteps, c8: Candidate, levels: int, inp: SearchInput) -> tuple[str, str]:
    """bf16 when its width-8 step takes at most ``bf16_gain`` of fp32's: ``(precision, reason)``."""
    t32 = steps.bare(replace(c8, precision="fp32"), levels)
    t16 = steps.bare(replace(c8, precision="bf16"), levels)
    precision = "bf16" if t16 <= inp.settings.bf16_gain * t32 else "fp32"
    why = f"probe at width 8: bf16 {t16:.3f} s vs fp32 {t32:.3f} s per bare step"
    return precision, why + ("" if inp.measured else " (estimate)")


def choose_channels_last(steps: BareSteps, c8: Candidate, levels: int, inp: SearchInput) -> tuple[bool, str]:
    """Channels-last 3D activations when their width-8 step takes at most ``channels_last_gain`` of
    channels-first's: ``(channels_last, reason)``."""
    t_cl = steps.bare(replace(c8, channels_last=True), levels)
    t_cf = steps.bare(replace(c8, channels_last=False), levels)
    cl = t_cl <= inp.settings.channels_last_gain * t_cf
    return cl, f"probe at width 8: channels-last {t_cl:.3f} s vs channels-first {t_cf:.3f} s per bare step"


def member_count(t8: float, train_one_s: float, budget_s: int, s: Settings = SETTINGS) -> tuple[int, str]:
    """How many networks the budget is worth, from the width-8 step ``t8`` at the full patch and the training
    time one network would get from the whole budget."""
    s8 = int(train_one_s / t8)
    members = max(1, min(s.max_members, round(s8 / s.member_steps_w8)))
    why = f"the budget buys {s8} steps of a width-8 net; {s.member_steps_w8} are one network's worth" + (
        f" -> {members} members of {budget_s // members // 60} min, mean softmax" if members > 1 else " -> one network"
    )
    return members, why


def widest_width(
    steps: BareSteps, c: Candidate, levels: int, train_s: float, inp: SearchInput
) -> tuple[int, float] | None:
    """The widest base of ``bases`` that fits the memory and still buys ``min_steps`` in ``train_s``:
    ``(base, real step)``."""
    best = None
    for base in inp.settings.bases:
        if activation_gb(base, levels, c.patch, c.batch, c.precision) > inp.memory_gb:
            break
        cand = replace(c, base=base)
        t = inp.model.real(steps.bare(cand, levels), cand)
        if train_s / t < inp.min_steps:
            break
        best = (base, t)
    return best


def next_patch(patch: list[int], steps: BareSteps, c: Candidate, need_s: float, inp: SearchInput) -> list[int]:
    """The next patch worth a probe after ``patch`` failed: shrink once, then keep shrinking (unprobed) while
    the narrowest width's step at ``patch``, scaled by voxels, is still over ``shrink_margin`` times the
    ``need_s`` seconds a step may take (step time falls no faster than the voxel count: a skipped patch would
    have failed its probe too; the margin covers the probes' noise)."""
    s = inp.settings
    cand = replace(c, base=s.bases[0], patch=tuple(patch))
    rec = steps.find(cand)
    t = None if rec is None else inp.model.real(rec.bare_s, cand)
    nxt = rules.shrink_patch(patch)
    while t is not None and not smallest(nxt, s) and t * math.prod(nxt) / math.prod(patch) > s.shrink_margin * need_s:
        nxt = rules.shrink_patch(nxt)
    return nxt


def smallest(patch: Sequence[int], s: Settings = SETTINGS) -> bool:
    """The floor of the patch search: it is planned there at the narrowest width, fast enough or not."""
    return min(patch) <= 2 * rules.MIN_FEATURE or math.prod(patch) <= s.smallest_voxels


def _shrinks(patch: Sequence[int], s: Settings) -> list[list[int]]:
    """``patch`` and every patch the search may shrink it to, largest first."""
    out = [list(patch)]
    while not smallest(out[-1], s):
        out.append(rules.shrink_patch(out[-1]))
    return out


def estimated(steps: BareSteps, inp: SearchInput, cand: Candidate) -> float:
    """The cost model: a real step of ``cand`` from its FLOP estimate and this machine's rate."""
    levels = levels_for(cand.patch)
    return inp.model.real(machine_rate(steps, inp) * inp.estimate(cand, levels), cand)


def machine_rate(steps: BareSteps, inp: SearchInput) -> float:
    """A timed bare step over its FLOP estimate, once per plan: the narrowest width's fp32 channels-last step (the
    width the screen asks about: a narrow net does less per FLOP than a wide one) at the largest patch the FLOP
    estimate puts within the step the floor allows (a rate, not a candidate: the smaller patch costs less to time)."""
    if steps.rate is None:
        s, need = inp.settings, inp.floor_step_s
        at = lambda p: inp.narrowest(p, "fp32")  # noqa: E731
        patches = _shrinks(inp.full_patch, s)
        patch = next((p for p in patches if inp.estimate(at(p), levels_for(p)) <= need), patches[-1])
        steps.rate = steps.bare(at(patch), levels_for(patch)) / inp.estimate(at(patch), levels_for(patch))
        steps.rate_patch = tuple(patch)
    return steps.rate


def screen(steps: BareSteps, inp: SearchInput) -> tuple[list[int], str | None]:
    """Step 0: the largest patch from ``full_patch`` down whose narrowest step (best precision, estimated) is
    within the margin of the step the floor allows if one network had the whole budget, and why the larger ones
    were skipped (None when none was). The margin is ``skip_margin`` where the estimate may read high: a patch
    larger than the one the rate was timed at (a larger patch does more per FLOP), or a device with bf16 (the
    rate is timed in fp32); else ``shrink_margin``, the probes' noise (a smaller patch, in fp32, steps no
    faster than the FLOP estimate scaled from the rate's patch). Answered once per full patch and plan: a
    calibration round's search starts where the first one did (its new data cost would move the line, and time
    patches again)."""
    patches = _shrinks(inp.full_patch, inp.settings)
    if inp.estimate is None or len(patches) == 1:
        return list(inp.full_patch), None
    key = tuple(inp.full_patch)
    if key not in steps.screened:
        steps.screened[key] = _screen(steps, inp, patches)
    return steps.screened[key]


def _screen(steps: BareSteps, inp: SearchInput, patches: list[list[int]]) -> tuple[list[int], str | None]:
    s, need = inp.settings, inp.floor_step_s
    tight = False  # a patch skipped at the tighter margin
    for patch in patches:
        t = estimated(steps, inp, inp.narrowest(patch))
        loose = inp.bf16 or math.prod(patch) > math.prod(steps.rate_patch)
        if t <= (s.skip_margin if loose else s.shrink_margin) * need or patch == patches[-1]:
            break
        tight = tight or not loose
    if patch == patches[0]:
        return patch, None
    at_rate = f" (over {s.shrink_margin:g}x at or below {shape_text(steps.rate_patch)}, where the rate was timed)"
    why = (
        f"larger patches skipped unprobed: the cost model (FLOPs x this machine's measured rate) puts width "
        f"{s.bases[0]} at {shape_text(patches[0])} over {s.skip_margin:g}x the {need:.3f} s a step may take"
    )
    return patch, why + (at_rate if tight else "")


def search(steps: BareSteps, inp: SearchInput) -> Choice:
    """Run the decisions in order from ``inp.full_patch`` down (see the module docstring)."""
    s, reasons = inp.settings, {}
    patch, screened = screen(steps, inp)
    if screened:
        reasons["screen"] = screened
    members, cl, train_s, precision = 0, True, 0.0, "fp32"
    while True:
        levels = levels_for(patch)
        c8 = Candidate(s.precision_base, tuple(patch), s.batch, precision, cl)
        if not members:  # once, at the first patch: precision, memory format, how many networks the budget is worth
            if inp.bf16:
                precision, reasons["precision"] = choose_precision(steps, c8, levels, inp)
                c8 = replace(c8, precision=precision)
            if inp.measured:
                cl, reasons["channels_last"] = choose_channels_last(steps, c8, levels, inp)
                c8 = replace(c8, channels_last=cl)
            t8 = inp.model.real(steps.bare(c8, levels), c8)
            members, reasons["members"] = member_count(t8, inp.train_time(1), inp.budget_s, s)
            train_s = inp.train_time(members)
        best = widest_width(steps, c8, levels, train_s, inp)
        if best is None and smallest(patch, s):  # the smallest there is; the budget is short
            narrow = replace(c8, base=s.bases[0])
            best = (s.bases[0], inp.model.real(steps.bare(narrow, levels), narrow))
        if best is not None:
            return Choice(best[0], patch, levels, precision, cl, best[1], members, train_s, s.batch, reasons)
        patch = next_patch(patch, steps, c8, train_s / inp.min_steps, inp)
