"""The probe search: which precision, how many ensemble members, how wide a network and how large a patch
the budget buys, decided from timed (or estimated) training steps. One function per decision, as
nnU-Net's planner has one step per decision; :func:`search` runs them in order.

1. precision: bf16 autocast when the device supports it and its probe is at least 15 % faster (``BF16_GAIN``);
2. members: when the budget buys more than one network can use (``round(S8 / MEMBER_STEPS_W8)`` >= 2, S8
   the optimiser steps of a width-8 net at the full patch in the whole budget), it is split into that many
   members (at most ``MAX_MEMBERS``), each planned for its share. Why: on the hippocampus cases one planned
   net gained nothing past ~20 minutes (6258 width-8 steps): 60 minutes of one wider net (32..256) scored
   0.8914 on validation against 0.8945 +- 0.0020 for 20 minutes of 16..128;
3. width: the widest first-level width of ``BASES`` whose step still buys ``min_steps`` optimiser steps in
   the training share of the budget (and whose activations fit the memory);
4. patch: when even the narrowest width cannot, the patch shrinks (nnU-Net's reduction, ``rules.shrink_patch``)
   and 1, 3 and 4 repeat; patches that the last probe shows to be far too slow are skipped unprobed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from seg.plan import cost, rules

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
PRECISION_BASE = 8  # the width at which precision and members are probed


# (candidate, levels) -> seconds of one bare training step (measured, or estimated for an absent device)
StepTimer = Callable[[cost.Candidate, int], float]


@dataclass
class Probes:
    """Every probe the search takes, each candidate timed once; step times include ``STEP_OVERHEAD``.

    Args:
        timer: times one bare step of a candidate.
        train_s: the seconds of training one network gets (``steps_in_budget`` of each record).
        label: the net's name, for the log.
    """

    timer: StepTimer
    train_s: float
    label: str = ""
    records: list[dict] = field(default_factory=list)

    def measure(self, cand: cost.Candidate, levels: int) -> float:
        """Time ``cand`` (always: the search asks each candidate once) and record it."""
        t = self.timer(cand, levels) * STEP_OVERHEAD
        self.records.append(
            {
                "base": cand.base,
                "patch": list(cand.patch),
                "batch": cand.batch,
                "precision": cand.precision,
                "step_s": round(t, 4),
                "steps_in_budget": int(self.train_s / t),
            }
        )
        log.info(
            "probe %s base %d patch %s batch %d %s: %.3f s/step (overhead included)",
            self.label,
            cand.base,
            list(cand.patch),
            cand.batch,
            cand.precision,
            t,
        )
        return t

    def cached(self, base: int, patch: Sequence[int], precision: str) -> float | None:
        """The recorded step time of ``(base, patch, precision)``, if it was probed."""
        return next(
            (
                p["step_s"]
                for p in self.records
                if p["base"] == base and p["patch"] == list(patch) and p["precision"] == precision
            ),
            None,
        )

    def step(self, cand: cost.Candidate, levels: int) -> float:
        """The recorded time of ``cand``, else a new probe."""
        return self.cached(cand.base, cand.patch, cand.precision) or self.measure(cand, levels)

    def rebudget(self, train_s: float) -> None:
        """Recount every record's steps for ``train_s`` seconds of training (after the members split)."""
        self.train_s = train_s
        for p in self.records:
            p["steps_in_budget"] = int(train_s / p["step_s"])


@dataclass
class Choice:
    """What the search decided, with the reason of each decision."""

    base: int
    patch: list[int]
    levels: int
    precision: str
    step_s: float
    members: int
    train_s: float  # seconds of training of one member
    reasons: dict = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return int(self.train_s / self.step_s)


def levels_for(patch: Sequence[int]) -> int:
    """A U-Net deep enough for the patch's pooling (at least 3 levels)."""
    return max(3, 1 + max(rules.pools_per_axis(patch)))


def choose_precision(
    probes: Probes, patch: Sequence[int], batch: int, levels: int, measured: bool
) -> tuple[str, float, str]:
    """bf16 when its width-8 step takes at most ``BF16_GAIN`` of fp32's: ``(precision, its step, reason)``."""
    t32 = probes.measure(cost.Candidate(PRECISION_BASE, tuple(patch), batch, "fp32"), levels)
    t16 = probes.measure(cost.Candidate(PRECISION_BASE, tuple(patch), batch, "bf16"), levels)
    precision = "bf16" if t16 <= BF16_GAIN * t32 else "fp32"
    why = f"probe at width 8: bf16 {t16:.3f} s vs fp32 {t32:.3f} s per step" + ("" if measured else " (estimate)")
    return precision, (t16 if precision == "bf16" else t32), why


def member_count(t8: float, budget_s: int) -> tuple[int, str]:
    """How many networks the budget is worth, from the width-8 step ``t8`` at the full patch."""
    s8 = int(budget_s * TRAIN_SHARE / t8)
    members = max(1, min(MAX_MEMBERS, round(s8 / MEMBER_STEPS_W8)))
    why = f"the budget buys {s8} steps of a width-8 net; {MEMBER_STEPS_W8} are one network's worth" + (
        f" -> {members} members of {budget_s // members // 60} min, mean softmax" if members > 1 else " -> one network"
    )
    return members, why


def widest_width(
    probes: Probes,
    patch: Sequence[int],
    batch: int,
    levels: int,
    precision: str,
    memory_gb: float,
    min_steps: int,
) -> tuple[int, float] | None:
    """The widest base of ``BASES`` that fits ``memory_gb`` and still buys ``min_steps``: ``(base, step)``."""
    best = None
    for base in BASES:
        if cost.activation_gb(base, levels, patch, batch, precision) > memory_gb:
            break
        t = probes.step(cost.Candidate(base, tuple(patch), batch, precision), levels)
        if probes.train_s / t < min_steps:
            break
        best = (base, t)
    return best


def next_patch(patch: list[int], probes: Probes, precision: str, need_s: float) -> list[int]:
    """The next patch worth a probe after ``patch`` failed: shrink once, then keep shrinking (unprobed) while
    the narrowest width's step measured at ``patch``, scaled by voxels, is still over twice the ``need_s``
    seconds a step may take. In the probes measured here step time falls no faster than the voxel count
    (slower on small patches, where fixed costs weigh more), so a skipped patch would have failed its probe
    too; the 2x margin leaves room for the probe's noise and keeps a measured probe at every patch near the
    line. Without it the whole-head T1 volumes walked 10 patch sizes at three probes each (89 s of probing
    for a 20-minute budget, 42 s with it: scripts/bench_plan.py)."""
    t = probes.cached(BASES[0], patch, precision)
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
    batch: int,
    bf16: bool,
    measured: bool,
    memory_gb: float,
    min_steps: int,
) -> Choice:
    """Run the decisions in order from ``full_patch`` down (see the module docstring)."""
    reasons: dict = {}
    patch, members = list(full_patch), 0
    while True:
        levels = levels_for(patch)
        precision, t8 = "fp32", None
        if bf16:
            precision, t8, reasons["precision"] = choose_precision(probes, patch, batch, levels, measured)
        if not members:  # once, at the full patch: how many networks the budget is worth
            t8 = t8 or probes.measure(cost.Candidate(PRECISION_BASE, tuple(patch), batch, precision), levels)
            members, reasons["members"] = member_count(t8, budget_s)
            probes.train_s = budget_s * TRAIN_SHARE / members
        best = widest_width(probes, patch, batch, levels, precision, memory_gb, min_steps)
        if best is None and smallest(patch):  # the smallest there is; the budget is short
            best = (BASES[0], probes.measure(cost.Candidate(BASES[0], tuple(patch), batch, precision), levels))
        if best is not None:
            probes.rebudget(probes.train_s)  # probes taken before the members split count one member's share
            return Choice(best[0], patch, levels, precision, best[1], members, probes.train_s, reasons)
        patch = next_patch(patch, probes, precision, probes.train_s / min_steps)
