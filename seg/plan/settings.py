"""The planner's settings: every number that steers a plan, in one frozen object, one line each.

Each comment states the rule the value serves; why it has this value (the measurements behind it) is in
docs/planning.md, section "The settings". The data's own rules (spacing, pooling, normalisation) keep their
constants in ``seg.plan.rules``, beside the nnU-Net rules they follow. Tests build variants with
``dataclasses.replace(SETTINGS, ...)`` and pass them to :class:`seg.plan.planner.Planner`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    # the search (seg.plan.search)
    bases: tuple[int, ...] = (4, 8, 16, 32)  # first-level widths tried, narrowest first
    min_steps: int = 4000  # optimiser steps a member's training must buy (seg-plan --min-steps)
    precision_base: int = 8  # the width at which precision, memory format and members are probed
    batch: int = 2  # patches per optimiser step (nnU-Net's 3D batch)
    bf16_gain: float = 0.85  # bf16 when its step takes at most this fraction of fp32's
    channels_last_gain: float = 0.95  # channels-last when its step takes at most this fraction of channels-first's
    monotone_slack: float = 1.05  # a thinner net / smaller patch this much slower than a wider / larger: remeasure
    member_steps_w8: int = 6000  # width-8 steps one member's training is worth; more buy another member
    max_members: int = 5  # ensemble members at most
    skip_margin: float = 2.0  # a patch whose FLOP-estimated step is over this multiple of the allowed one is not probed
    shrink_margin: float = 1.15  # ... nor one whose step scaled by voxels from a probed larger patch is over this
    smallest_voxels: int = 16**3  # the patch search stops at this many voxels (or an axis of 2 * MIN_FEATURE)
    step_overhead: float = 1.3  # a real step over the bare probe's, before the training probe measured it
    # the resolution (seg.plan.planner: the low-resolution configuration)
    lowres_factors: tuple[float, ...] = (1.25, 1.5, 2.0)  # coarser spacings tried, x the data's
    lowres_min_label_voxels: int = 500  # no spacing at which a label's median object has fewer voxels
    # the budget (seg.plan.planner.Budget)
    min_budget_s: int = 60  # a plan trains for at least a minute
    train_share: float = 0.85  # of a member's budget trains, where validation and start-up are not measured
    validation_parts: int = 10  # validation every tenth of a member's budget ...
    validation_every_min_s: int = 60  # ... at most once a minute ...
    validation_share: float = 0.2  # ... and spaced so that periodic validation takes at most this share of training
    validation_margin_s: float = 30.0  # ... and none starts within this of max_time (Lightning would run it past)
    startup_s: float = 12.0  # a run's fixed start-up: imports, config, the trainer
    min_max_time_s: int = 30  # trainer.max_time at least this
    loop_overhead_s: float = 0.006  # Lightning's loop around the training probe's step, seconds a step
    calibration_rounds: int = 3  # training probes at most before the choice is taken as it stands
    calibration_near: float = 1.25  # ... or none once it lands within this voxel ratio of a probed candidate
    folds: int = 5  # k of the planned k-fold split (one fold per case below that many cases)
    # the data pipeline
    device_cache_share: float = 0.5  # the device pipeline when the cached cases take at most this share of memory
    max_workers: int = 4  # worker processes at most (the cores less the one that trains)
    # the timings (seg.plan.timing)
    bare_reps: int = 5  # timed bare steps after the warm-up: their median is the figure
    bare_min_reps: int = 3  # ... or this many, where they lie within bare_agree of each other
    bare_agree: float = 0.05  # max / min - 1 of those steps
    bare_too_slow_s: float = 30.0  # a bare step slower than this is returned after one sample
    training_cases: int = 14  # training cases the training probe caches
    training_val_cases: int = 2  # cases it validates
    training_warmup: int = 4  # training steps before the timed ones
    training_steps: int = 24  # timed training steps (with the warm-up, two epochs of 14 cases in patches)
    training_trim: float = 0.1  # the fastest and the slowest tenth left out
    # the machine (seg.plan.machine)
    busy_cores: float = 0.5  # other processes using this many cores or more make the machine busy
    load_sample_s: float = 1.0  # seconds the load is sampled before probing
    gpu_memory_share: float = 0.8  # of the GPU's memory a run may use
    ram_share: float = 0.5  # of the available RAM a run may use
    min_memory_gb: float = 0.5  # --memory-gb at least this (importing torch, MONAI and seg's data takes 0.57 GB RSS)
    absent_gpu_gb: float = 24.0  # the memory planned for an absent GPU (estimates)
    # the probe memory (seg.plan.memory)
    keep: int = 5  # figures kept per probe (the newest); a plan reads their median
    max_age_days: int = 30  # older figures are dropped


SETTINGS = Settings()
