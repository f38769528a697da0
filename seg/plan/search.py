"""The probe search: which precision and memory format, how many ensemble members, how wide a network and
how large a patch the budget buys, decided from timed (or estimated) training steps. One function per
decision, as nnU-Net's planner has one step per decision; :func:`search` runs them in order.

1. precision: bf16 autocast when the device supports it and its probe is at least 15 % faster (``BF16_GAIN``);
   channels-last 3D activations when their probe is at least 5 % faster (``CHANNELS_LAST_GAIN``);
2. members: when the budget buys more than one network can use (``round(S8 / MEMBER_STEPS_W8)`` >= 2, S8
   the optimiser steps of a width-8 net at the full patch in the whole budget), it is split into that many
   members (at most ``MAX_MEMBERS``), each planned for its share. Why: on the hippocampus cases one planned
   net gained nothing past ~20 minutes (6258 width-8 steps): 60 minutes of one wider net (32..256) scored
   0.8914 on validation against 0.8945 +- 0.0020 for 20 minutes of 16..128;
3. width: the widest first-level width of ``BASES`` whose step still buys ``min_steps`` optimiser steps in
   a member's training time (and whose activations fit the memory);
4. patch: when even the narrowest width cannot, the patch shrinks (nnU-Net's reduction, ``rules.shrink_patch``)
   and 1, 3 and 4 repeat; patches that the last probe shows to be far too slow are skipped unprobed.

A probe's figure is the median of ``cost.REPS`` timed steps; a thinner net or a smaller patch measured slower
than a wider or larger one is measured again, and then taken as no slower (noise, not the machine). A real
training step costs more than the bare probe: its batch is loaded, augmented and moved, and the loop has its
own cost. Once the training probe (``seg.plan.probe``) has measured a real step, that extra is modelled as a
cost per voxel of the batch (``Probes.data_s_per_voxel``: on the demo data 1.0e-6 and 1.15e-6 s at two
patches, where a factor on the bare step read 1.37 and 1.47); before that, and for a device that is not
present, the bare step is scaled by ``STEP_OVERHEAD``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from seg.plan import cost, rules

log = logging.getLogger(__name__)

BASES = (4, 8, 16, 32)
# 4000; 3000 would keep the hippocampus plan at width 8 in every hour measured on the 2-core VM (4000 takes width
# 4 when its width-8 step reads slower than 0.27 s) but puts the demo's plan near the line: docs/planning.md.
MIN_STEPS = 4000
TRAIN_SHARE = 0.85  # of a member's budget, where validation and start-up cannot be measured (estimates)
# What a real training step costs beyond the bare probe, before the training probe has measured it (and for
# an absent device): on the demo's synthetic data two planned runs made 77 % of the steps the bare probe
# predicted.
STEP_OVERHEAD = 1.3
BF16_GAIN = 0.85  # bf16 is used when its step takes at most this fraction of fp32's
CHANNELS_LAST_GAIN = 0.95  # channels-last when its step takes at most this fraction of the default layout's
MONOTONE_SLACK = 1.05  # a thinner net / smaller patch measured > 5 % slower than a wider / larger one: remeasure
MEMBER_STEPS_W8 = 6000  # width-8 steps one member's training is worth (the 20-minute hippocampus plan's 6258)
MAX_MEMBERS = 5
PRECISION_BASE = 8  # the width at which precision, memory format and members are probed


# (candidate, levels) -> seconds of one bare training step (measured, or estimated for an absent device)
StepTimer = Callable[[cost.Candidate, int], float]


@dataclass
class Probes:
    """Every probe the search takes, each candidate timed once (twice when it broke monotonicity).

    Args:
        timer: times one bare step of a candidate.
        train_s: seconds of training one network gets (each record's ``steps_in_budget``).
        label: the net's name, for the log.
        data_s_per_voxel: a real step's cost beyond the bare probe per voxel of its batch (measured by the
            training probe); None: the bare step times ``STEP_OVERHEAD``.
    """

    timer: StepTimer
    train_s: float
    label: str = ""
    data_s_per_voxel: float | None = None
    records: list[dict] = field(default_factory=list)
    remeasured: int = 0

    def real(self, bare_s: float, cand: cost.Candidate) -> float:
        """A real training step from the bare probe's (see the module docstring)."""
        if self.data_s_per_voxel is None:
            return bare_s * STEP_OVERHEAD
        return bare_s + self.data_s_per_voxel * cand.batch * math.prod(cand.patch)

    def _find(self, cand: cost.Candidate) -> dict | None:
        key = (cand.base, list(cand.patch), cand.precision, cand.channels_last)
        return next((r for r in self.records if _key(r) == key), None)

    def bare(self, cand: cost.Candidate, levels: int) -> float:
        """The bare step of ``cand``: recorded, else probed now (and checked against its neighbours)."""
        rec = self._find(cand)
        if rec is None:
            rec = {
                "base": cand.base,
                "patch": list(cand.patch),
                "batch": cand.batch,
                "precision": cand.precision,
                "channels_last": cand.channels_last,
                "levels": levels,
                "bare_s": self.timer(cand, levels),
            }
            self.records.append(rec)
            log.info(
                "probe %s base %d patch %s %s: %.4f s/step (bare)",
                self.label,
                cand.base,
                cand.patch,
                cand.precision + ("" if cand.channels_last else " channels-first"),
                rec["bare_s"],
            )
            self._monotone(rec)
        return rec["bare_s"]

    def step(self, cand: cost.Candidate, levels: int) -> float:
        """Seconds of a real training step of ``cand`` (:meth:`real` of its bare probe)."""
        return self.real(self.bare(cand, levels), cand)

    def cached(self, cand: cost.Candidate) -> float | None:
        rec = self._find(cand)
        return None if rec is None else self.real(rec["bare_s"], cand)

    def _monotone(self, new: dict) -> None:
        """A thinner net, or a smaller patch, is never slower: a record that says otherwise is measured again
        (both sides), and if it still does, the smaller one is taken as fast as the larger."""
        for old in self.records:
            if old is new or (old["precision"], old["channels_last"]) != (new["precision"], new["channels_last"]):
                continue
            if old["patch"] == new["patch"] and old["base"] != new["base"]:
                small, large = sorted((old, new), key=lambda r: r["base"])
            elif old["base"] == new["base"] and math.prod(old["patch"]) != math.prod(new["patch"]):
                small, large = sorted((old, new), key=lambda r: math.prod(r["patch"]))
            else:
                continue
            if small["bare_s"] > large["bare_s"] * MONOTONE_SLACK:
                self.remeasured += 1
                for r in (small, large):
                    r["bare_s"] = self.timer(_cand(r), r["levels"])
                small["bare_s"] = min(small["bare_s"], large["bare_s"])

    def table(self, train_s: float) -> list[dict]:
        """The records as the plan file lists them: real step seconds and the steps they buy in ``train_s``."""
        out = []
        for r in self.records:
            t = self.real(r["bare_s"], _cand(r))
            out.append(
                {k: r[k] for k in ("base", "patch", "batch", "precision", "channels_last")}
                | {"step_s": round(t, 4), "steps_in_budget": int(train_s / t)}
            )
        return out


def _key(r: dict) -> tuple:
    return r["base"], r["patch"], r["precision"], r["channels_last"]


def _cand(r: dict) -> cost.Candidate:
    return cost.Candidate(r["base"], tuple(r["patch"]), r["batch"], r["precision"], r["channels_last"])


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
    batch: int = 2
    reasons: dict = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return int(self.train_s / self.step_s)

    @property
    def candidate(self) -> cost.Candidate:
        return cost.Candidate(self.base, tuple(self.patch), self.batch, self.precision, self.channels_last)


def levels_for(patch: Sequence[int]) -> int:
    """A U-Net deep enough for the patch's pooling (at least 3 levels)."""
    return max(3, 1 + max(rules.pools_per_axis(patch)))


def choose_precision(probes: Probes, c8: cost.Candidate, levels: int, measured: bool) -> tuple[str, str]:
    """bf16 when its width-8 step takes at most ``BF16_GAIN`` of fp32's: ``(precision, reason)``."""
    t32 = probes.bare(replace(c8, precision="fp32"), levels)
    t16 = probes.bare(replace(c8, precision="bf16"), levels)
    precision = "bf16" if t16 <= BF16_GAIN * t32 else "fp32"
    why = f"probe at width 8: bf16 {t16:.3f} s vs fp32 {t32:.3f} s per bare step" + ("" if measured else " (estimate)")
    return precision, why


def choose_channels_last(probes: Probes, c8: cost.Candidate, levels: int) -> tuple[bool, str]:
    """Channels-last 3D activations when their width-8 step takes at most ``CHANNELS_LAST_GAIN`` of the default
    layout's: ``(channels_last, reason)``."""
    t_cl = probes.bare(replace(c8, channels_last=True), levels)
    t_cf = probes.bare(replace(c8, channels_last=False), levels)
    cl = t_cl <= CHANNELS_LAST_GAIN * t_cf
    return cl, f"probe at width 8: channels-last {t_cl:.3f} s vs channels-first {t_cf:.3f} s per bare step"


def member_count(t8: float, train_one_s: float, budget_s: int) -> tuple[int, str]:
    """How many networks the budget is worth, from the width-8 step ``t8`` at the full patch and the training
    time one network would get from the whole budget."""
    s8 = int(train_one_s / t8)
    members = max(1, min(MAX_MEMBERS, round(s8 / MEMBER_STEPS_W8)))
    why = f"the budget buys {s8} steps of a width-8 net; {MEMBER_STEPS_W8} are one network's worth" + (
        f" -> {members} members of {budget_s // members // 60} min, mean softmax" if members > 1 else " -> one network"
    )
    return members, why


def widest_width(
    probes: Probes, c: cost.Candidate, levels: int, memory_gb: float, min_steps: int
) -> tuple[int, float] | None:
    """The widest base of ``BASES`` that fits ``memory_gb`` and still buys ``min_steps``: ``(base, step)``."""
    best = None
    for base in BASES:
        if cost.activation_gb(base, levels, c.patch, c.batch, c.precision) > memory_gb:
            break
        t = probes.step(replace(c, base=base), levels)
        if probes.train_s / t < min_steps:
            break
        best = (base, t)
    return best


def next_patch(patch: list[int], probes: Probes, c: cost.Candidate, need_s: float) -> list[int]:
    """The next patch worth a probe after ``patch`` failed: shrink once, then keep shrinking (unprobed) while
    the narrowest width's step measured at ``patch``, scaled by voxels, is still over twice the ``need_s``
    seconds a step may take. In the probes measured here step time falls no faster than the voxel count
    (slower on small patches, where fixed costs weigh more), so a skipped patch would have failed its probe
    too; the 2x margin leaves room for the probe's noise and keeps a measured probe at every patch near the
    line. Without it the whole-head T1 volumes walked 10 patch sizes at three probes each (89 s of probing
    for a 20-minute budget, 42 s with it: scripts/bench_plan.py)."""
    t = probes.cached(replace(c, base=BASES[0], patch=tuple(patch)))
    nxt = rules.shrink_patch(patch)
    while t is not None and not smallest(nxt) and t * math.prod(nxt) / math.prod(patch) > 2 * need_s:
        nxt = rules.shrink_patch(nxt)
    return nxt


def smallest(patch: Sequence[int]) -> bool:
    """The floor of the patch search: it is planned there at the narrowest width, fast enough or not."""
    return min(patch) <= 2 * rules.MIN_FEATURE or math.prod(patch) <= 16**3


def search(
    probes: Probes,
    full_patch: list[int],
    budget_s: int,
    bf16: bool,
    measured: bool,
    memory_gb: float,
    min_steps: int,
    train_time: Callable[[int], float],
    batch: int = 2,
) -> Choice:
    """Run the decisions in order from ``full_patch`` down (see the module docstring). ``train_time(m)``:
    the seconds of training each of ``m`` members gets from the budget."""
    reasons: dict = {}
    patch, members, cl = list(full_patch), 0, True
    while True:
        levels = levels_for(patch)
        c8 = cost.Candidate(PRECISION_BASE, tuple(patch), batch, "fp32", cl)
        precision = "fp32"
        if bf16:
            precision, reasons["precision"] = choose_precision(probes, c8, levels, measured)
        c8 = replace(c8, precision=precision)
        if not members:  # once, at the full patch: the memory format, and how many networks the budget is worth
            if measured:
                cl, reasons["channels_last"] = choose_channels_last(probes, c8, levels)
                c8 = replace(c8, channels_last=cl)
            members, reasons["members"] = member_count(probes.step(c8, levels), train_time(1), budget_s)
            probes.train_s = train_time(members)
        best = widest_width(probes, c8, levels, memory_gb, min_steps)
        if best is None and smallest(patch):  # the smallest there is; the budget is short
            best = (BASES[0], probes.step(replace(c8, base=BASES[0]), levels))
        if best is not None:
            return Choice(best[0], patch, levels, precision, cl, best[1], members, probes.train_s, batch, reasons)
        patch = next_patch(patch, probes, c8, probes.train_s / min_steps)
