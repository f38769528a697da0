"""The planner's typed records: a candidate the search may choose, what timing it cost, and the rows a plan
file lists. Plain frozen dataclasses, so a record read back from the probe memory or a plan compares equal."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    """One network size and training set-up the search may choose."""

    base: int  # filters of the first level (the width knob)
    patch: tuple[int, ...]
    batch: int
    precision: str  # "fp32" | "bf16"
    channels_last: bool = True  # channels-last 3D memory format of the activations


@dataclass
class BareStep:
    """A bare step's timing (the network on random tensors, no data): the search's unit of cost."""

    candidate: Candidate
    levels: int
    bare_s: float


@dataclass(frozen=True)
class TrainingCost:
    """The training probe's figures, in seconds: one training step through the planned data pipeline, validating
    one whole case, and loading and caching one case (the run's start-up)."""

    step_s: float
    val_case_s: float
    cache_case_s: float


@dataclass(frozen=True)
class ProbeRow:
    """A probe as the plan file lists it: the candidate, its real step and the steps it buys in the budget."""

    base: int
    patch: list[int]
    batch: int
    precision: str
    channels_last: bool
    step_s: float
    steps_in_budget: int
    bare_s: float  # the bare step the log printed; step_s is it as the step model reads it (with its data)
