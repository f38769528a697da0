"""``make_plan``: from a dataset's fingerprint and the cost model to a :class:`Plan` for a time budget.

The steps, in order (each one's reason goes into the plan file as a comment):

1. the data's own rules (``seg.plan.rules``): spacing, normalisation, pooling, the full patch (whole volumes
   when the median case fits), mirroring and patch sampling;
2. the data pipeline (``data.pipeline``): ``device`` (the cached cases on the training device, augmentation on
   its tensors) when the cached training cases fit in its memory, else ``workers``;
3. the probe search (``seg.plan.search``): precision, memory format, ensemble members, width and patch;
4. on the present device, the training probe (``seg.plan.probe``): the chosen candidate's real step through
   the planned pipeline (plus ``LOOP_OVERHEAD_S``, Lightning's loop around it), the cost of validating a
   case and of caching one; the search is run again with what it measured until the choice holds (at most
   ``CALIBRATION_ROUNDS`` probes), so that the planned steps are the steps a run makes; when runs of the
   same plan ended on this machine in the last hours, the steps come from their own steps instead
   (``seg.plan.memory``: seg-train keeps its step under the plan's ``planned.step_id``);
5. the budget (:class:`Budget`): start-up, periodic validation and the final validation are paid out of it, so
   that ``trainer.max_time`` plus the final validation ends within the budget; the learning-rate schedule
   runs on the fraction of ``max_time`` elapsed (``seg.lit.schedules``).

The plan file is written by ``seg.plan.planfile``.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np

from seg.config import UserError, human_duration, parse_duration
from seg.data.check import check_dataset, errors
from seg.data.datalist import load_dataset
from seg.nn.registry import list_nets, net_card, plannable_nets
from seg.plan import cost, machine, rules, search
from seg.plan.fingerprint import compute_fingerprint, cost_key
from seg.plan.memory import ProbeMemory, step_id
from seg.plan.probe import TrainingCost, training_probe
from seg.plan.search import MIN_STEPS, TRAIN_SHARE

log = logging.getLogger(__name__)

__all__ = ["MIN_STEPS", "TRAIN_SHARE", "Budget", "Plan", "make_plan", "parse_budget"]

MIN_BUDGET_S = 60  # a plan trains for at least a minute
VALIDATION_EVERY_MIN_S = 60  # validation every tenth of a member's budget, at most once a minute
STARTUP_S = 12.0  # a run's fixed start-up: imports, config, the trainer (measured here: 8-12 s on 2 cores)
# Lightning's loop around the probe's step (logging, the LR schedule, callbacks, checkpoints at epoch ends), in
# seconds a step: a cost per step, not a share of it. seg-train's step over the training probe's, alternating in
# one process on the demo plan (a 0.063 s step): 1.04, 1.43, 1.09, 1.10 (median 1.10: 0.006 s), with no progress
# bar (a log, not a terminal) and progress.png's redraw bounded to 2 %. As a share (1.10) it overcharged the
# hippocampus' 0.22-0.29 s step: in six undisturbed 20-minute runs the run's step, its loop included
# (0.256-0.269 s), was 0.90-1.16x the training probe's (median 0.92x).
LOOP_OVERHEAD_S = 0.006
CALIBRATION_ROUNDS = 3  # training probes at most before the choice is taken as it stands
DEVICE_CACHE_SHARE = 0.5  # the device pipeline is chosen when the cached cases take at most this share of memory


def parse_budget(text: str) -> int:
    """``--budget``: see :func:`seg.config.parse_duration`; at least ``MIN_BUDGET_S``."""
    s = parse_duration(text, "--budget")
    if s < MIN_BUDGET_S:
        raise UserError(f"--budget {text!r}: a plan needs at least {MIN_BUDGET_S} s of training")
    return s


@dataclass(frozen=True)
class Budget:
    """How one member's share of the budget is spent: start-up, training with its periodic validations, and
    the final validation after ``trainer.max_time`` (Lightning validates when the time is up), so that the
    run ends within the budget. Without measurements (a device that is not present) training gets
    ``TRAIN_SHARE`` of it, as before the training probe existed.

    Args:
        budget_s: the whole budget.
        members: ensemble members (each gets ``budget_s / members``).
        val_s: one validation pass over the validation cases; None = unmeasured.
        startup_s: one run's start-up (caching its cases included).
    """

    budget_s: int
    members: int = 1
    val_s: float | None = None
    startup_s: float = STARTUP_S

    @property
    def member_s(self) -> int:
        return self.budget_s // self.members

    @property
    def interval_s(self) -> int:
        return max(VALIDATION_EVERY_MIN_S, self.member_s // 10)

    @property
    def max_time_s(self) -> int:
        if self.val_s is None:
            return self.member_s
        # the ensemble validates its members' mean twice at the end: each member pays its share of that
        ensemble = 2 * self.val_s if self.members > 1 else 0.0
        return max(30, int(self.member_s - self.startup_s - self.val_s - ensemble))

    @property
    def validations(self) -> int:
        """Periodic validations inside ``max_time`` (each starts ``interval_s`` after the last one ended)."""
        return 0 if self.val_s is None else int(self.max_time_s // (self.interval_s + self.val_s))

    @property
    def train_s(self) -> float:
        if self.val_s is None:
            return self.member_s * TRAIN_SHARE
        return max(1.0, self.max_time_s - self.validations * self.val_s)


@dataclass
class Plan:
    """What ``seg-plan`` decided for one dataset, network, budget and device (built with keywords)."""

    dataset: str
    net: str
    budget: Budget
    device: str
    devices: int
    measured: bool  # probes timed on the device (else estimated from FLOPs and the cost table)
    n_cases: int
    modalities: list[str]
    spacing: list[float]
    normalize: dict
    median_shape: list[int]
    data: dict  # the SegDataModule keywords the plan sets (patch, batch, pipeline, augmentation, ...)
    patch: list[int]
    levels: int
    base: int
    batch: int
    precision: str
    channels_last: bool
    step_s: float
    steps: int
    busy: bool = False  # other processes kept the CPU busy while probing (see seg.plan.machine)
    memory: str = ""  # which probes came from the probe memory (seg.plan.memory)
    step_id: str = ""  # the chosen training step's id in the probe memory (seg-train keeps its own step under it)
    probes: list[dict] = field(default_factory=list)
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
        return all(p >= m for p, m in zip(self.patch, self.median_shape))

    @property
    def folds(self) -> int:
        """K of the plan's k-fold split: 5, or one fold per case for a dataset of fewer cases."""
        return min(5, self.n_cases)

    @property
    def width(self) -> dict:
        """The network's width kwargs (its card's rule at ``base`` and ``levels``)."""
        return net_card(self.net).width_kwargs(self.base, self.levels)


def check_request(spec, net: str, root, memory_gb: float | None = None, devices: int = 1) -> None:
    """Refusals before any work: an unknown or unsizable net, a dataset of one case, a broken dataset, a memory
    or device count that cannot be."""
    if memory_gb is not None and not memory_gb > 0:
        raise UserError(f"--memory-gb {memory_gb:g}: give the memory a run may use, in GB (> 0)")
    if devices < 1:
        raise UserError(f"--devices {devices}: give 1 or more")
    if net not in list_nets():
        raise UserError(f"seg-plan: --net {net!r} is not a registered network")
    if net not in plannable_nets():
        raise UserError(f"seg-plan: no width rule for net {net!r} (planned nets: {', '.join(plannable_nets())})")
    if len(spec.cases) < 2:
        raise UserError(f"seg-plan: {root}: {len(spec.cases)} case, a plan needs 2 at least (one to validate on)")
    bad = errors(check_dataset(spec))
    if bad:
        lines = "\n".join(str(p) for p in bad)
        raise UserError(f"{lines}\n{len(bad)} dataset errors in {spec.root}: fix them (seg-check-data) and plan again")


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
    voxels = [int(np.prod(s)) for s in shapes]
    return {
        "spacing": spacing,
        "normalize": normalize,
        "median": median,
        "full": rules.round_patch(median),
        "flip_axes": flip_axes,
        "voxels": voxels,
        "channels": len(spec.channel_names),
        "reasons": reasons,
    }


def choose_pipeline(d: dict, memory_gb: float, device: str) -> tuple[str, str]:
    """``device`` when the cached, pre-processed cases (image channels and label as float32, padded to the
    patch at least) fit in ``DEVICE_CACHE_SHARE`` of the run's memory, else ``workers``."""
    patch = math.prod(d["full"])
    gb = sum(max(v, patch) for v in d["voxels"]) * (d["channels"] + 1) * 4 / 1e9
    where = "GPU" if device == "cuda" else "RAM"
    if gb <= DEVICE_CACHE_SHARE * memory_gb:
        why = f"the cached cases take {gb:.2f} GB of the {memory_gb:.0f} GB of {where} a run may use"
        return "device", why + ": cached on the device, augmented there, no worker processes"
    why = f"the cached cases would take {gb:.1f} GB, over {DEVICE_CACHE_SHARE:.0%} of the {memory_gb:.0f} GB"
    return "workers", why + " a run may use: worker processes"


def data_config(d: dict, c: search.Choice, median: list[int], pipeline: str, workers: int) -> dict:
    """The ``SegDataModule`` keywords of the plan (what the training probe builds and the plan file writes)."""
    whole = all(p >= m for p, m in zip(c.patch, median))
    return {
        "spacing": list(d["spacing"]),
        "normalize": dict(d["normalize"]),
        "patch_size": list(c.patch),
        "batch_size": c.batch if whole else c.batch // 2,
        "num_samples": 1 if whole else 2,
        "pos_neg": [1, 1],
        "augment": {"flip_axes": list(d["flip_axes"])},
        "pipeline": pipeline,
        "num_workers": 0 if pipeline == "device" else workers,
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
    devices: int = 1,
    reprobe: bool = False,
) -> Plan:
    """Plan ``net`` on ``root`` for ``budget`` on ``device`` (module docstring); ``reprobe``: see seg.plan.memory."""
    spec = load_dataset(root)
    budget_s = budget if isinstance(budget, int) else parse_budget(budget)
    check_request(spec, net, root, memory_gb, devices)
    measured = machine.present(device)
    memory_gb = machine.memory_gb(device) if memory_gb is None else memory_gb
    fp = compute_fingerprint(spec, cache, progress=progress)
    d = data_rules(spec, fp["cases"])
    pipeline, pipeline_why = choose_pipeline(d, memory_gb, device)
    load = _load(measured, device)
    mem = ProbeMemory(device, busy=load.busy, reprobe=reprobe, on=measured)
    probes = search.Probes(_timer(net, spec, device, measured, mem), budget_s * TRAIN_SHARE, net)
    args = (d["full"], budget_s, cost.bf16_supported(device) or not measured, measured, memory_gb, min_steps)
    c = search.search(probes, *args, train_time=lambda m: Budget(budget_s, m).train_s)
    workers = max(1, min(4, load.cores - 1))
    acct, sid = Budget(budget_s, c.members), ""
    if measured:
        c, acct, sid = _calibrate(probes, c, args, spec, d, net, device, pipeline, workers, root, mem, cost_key(fp))
    reasons = {**d["reasons"], **c.reasons, "pipeline": pipeline_why}
    reasons.update(_choice_reasons(c, d["median"], acct, measured, min_steps, devices))
    return Plan(
        dataset=str(Path(root).resolve()),
        net=net,
        budget=acct,
        device=device,
        devices=devices,
        measured=measured,
        n_cases=len(fp["cases"]),
        modalities=list(spec.channel_names),
        spacing=d["spacing"],
        normalize=d["normalize"],
        median_shape=d["median"],
        data=data_config(d, c, d["median"], pipeline, workers),
        patch=list(c.patch),
        levels=c.levels,
        base=c.base,
        batch=c.batch,
        precision=c.precision,
        channels_last=c.channels_last,
        step_s=round(c.step_s, 4),
        steps=c.steps,
        busy=load.busy,
        memory=mem.describe() if measured else "",
        step_id=sid,
        probes=probes.table(acct.train_s),
        reasons=reasons,
    )


def _load(measured: bool, device: str) -> machine.Load:
    """The other processes' load on a probed CPU (said once when busy); none on a GPU or an estimate."""
    load = machine.measure_load() if measured and device == "cpu" else machine.Load(machine.available_cores(), 0.0)
    if load.busy:
        log.warning("%s", load.warning())
    return load


def _timer(net: str, spec, device: str, measured: bool, mem: ProbeMemory):
    in_ch, out_ch = spec.in_channels, spec.out_channels

    def timer(cand: cost.Candidate, levels: int) -> float:
        if measured:
            key = _bare_key(net, levels, (in_ch, out_ch), cand)
            return mem.figure(key, lambda: cost.measure_step(net, cand, levels, in_ch, out_ch, device))
        return cost.estimate_step(net, cand, levels, in_ch, out_ch, device)

    return timer


def _bare_key(net: str, levels: int, channels: tuple[int, int], cand: cost.Candidate) -> str:
    return f"bare {net} levels {levels} channels {channels[0]}/{channels[1]} {_cand_key(cand)}"


def _cand_key(cand: cost.Candidate) -> str:
    layout = "channels-last" if cand.channels_last else "channels-first"
    return f"width {cand.base} patch {list(cand.patch)} batch {cand.batch} {cand.precision} {layout}"


def _train_key(net: str, c: search.Choice, fp_key, data: dict) -> str:
    return f"train {net} levels {c.levels} {_cand_key(c.candidate)} fingerprint {fp_key} " + json.dumps(
        data, sort_keys=True, default=str
    )


def _training_probe(mem: ProbeMemory, fp_key, root, ids, data, net, c, channels, device) -> TrainingCost:
    """The training probe of ``c``, through the probe memory (keyed by the dataset's fingerprint and ``data``)."""

    def measure() -> dict:
        return vars(training_probe(str(root), ids, data, net, c.candidate, c.levels, channels, device))

    return TrainingCost(**mem.record(_train_key(net, c, fp_key, data), measure))


def _calibrate(
    probes, c, args, spec, d, net, device, pipeline, workers, root, mem: ProbeMemory, fp_key
) -> tuple[search.Choice, Budget, str]:
    """Steps 4-5: the training probe at the choice, the search again with the data cost and budget it measured,
    until the choice holds (at most ``CALIBRATION_ROUNDS`` probes); the final choice's step is the measured one
    (or its runs', see seg.plan.memory). Also the step's id in the probe memory (``planned.step_id``)."""
    budget_s = args[1]
    n_val = max(1, math.ceil(len(spec.cases) / min(5, len(spec.cases))))
    ids = [case.case_id for case in spec.cases]
    channels = (spec.in_channels, spec.out_channels)
    measured: dict = {}  # candidate -> its TrainingCost
    for _ in range(CALIBRATION_ROUNDS):
        data = data_config(d, c, d["median"], pipeline, workers)
        tc = measured[c.candidate] = _training_probe(mem, fp_key, root, ids, data, net, c, channels, device)
        bare = _same_hour_bare(probes, mem, c, net, channels, device, fp_key, data)
        extra = max(0.0, tc.step_s + LOOP_OVERHEAD_S - bare)
        probes.data_s_per_voxel = extra / (c.batch * math.prod(c.patch))
        acct = Budget(budget_s, 1, tc.val_case_s * n_val, STARTUP_S + tc.cache_case_s * len(spec.cases))
        new = search.search(probes, *args, train_time=lambda m, a=acct: replace(a, members=m).train_s)
        if new.candidate == c.candidate:
            c = new
            break
        c = new
    if c.candidate not in measured:  # the rounds ran out on a new choice: measure it for its own step
        data = data_config(d, c, d["median"], pipeline, workers)
        tc = measured[c.candidate] = _training_probe(mem, fp_key, root, ids, data, net, c, channels, device)
    tc = measured[c.candidate]
    data = data_config(d, c, d["median"], pipeline, workers)
    key = _train_key(net, c, fp_key, data)
    sid, step = step_id(key), tc.step_s + LOOP_OVERHEAD_S
    if mem.was_read(key):  # chosen from kept figures: the steps of the runs of this plan, else this hour's speed
        step = mem.run_step(sid)  # a run's own step: its loop included
        if step is None:
            now = partial(training_probe, str(root), ids, data, net, c.candidate, c.levels, channels, device)
            step = mem.time_now(key, now) + LOOP_OVERHEAD_S
    acct = Budget(budget_s, c.members, tc.val_case_s * n_val, STARTUP_S + tc.cache_case_s * len(spec.cases))
    return replace(c, step_s=step, train_s=acct.train_s), acct, sid


def _same_hour_bare(probes, mem: ProbeMemory, c: search.Choice, net, channels, device, fp_key, data) -> float:
    """The bare step to set against a training probe: the search's figure, unless the training probe was measured
    now and the bare figure read from the memory (a new dataset on a known machine). Two hours' speeds then
    meet (this VM's same step read 0.233 s one night, 0.155 s the next morning) and the data cost, their
    difference, can read below 0 and be clamped at 0; so the bare step is timed now too (kept nowhere)."""
    kept = mem.was_read(_bare_key(net, c.levels, channels, c.candidate))
    if kept and not mem.was_read(_train_key(net, c, fp_key, data)):
        return cost.measure_step(net, c.candidate, c.levels, *channels, device)
    return probes.bare(c.candidate, c.levels)


def _choice_reasons(
    c: search.Choice, median: list[int], acct: Budget, measured: bool, min_steps: int, devices: int
) -> dict:
    whole = all(p >= m for p, m in zip(c.patch, median))
    patch = f"median resampled case {'x'.join(map(str, median))} rounded up to 2^pools per axis" + (
        ": whole volumes (padded)"
        if whole
        else f", shrunk to {'x'.join(map(str, c.patch))} so that a width of at least {search.BASES[0]} buys "
        f"{min_steps} steps"
    )
    spent = (
        f"{acct.train_s / 60:.1f} of a member's {acct.member_s / 60:.1f} min train: the rest starts the run "
        f"({acct.startup_s:.0f} s) and validates it {acct.validations + 1} times ({acct.val_s:.1f} s each)"
        if acct.val_s is not None
        else f"{TRAIN_SHARE:.0%} of a member's {human_duration(acct.member_s)} train (estimate)"
    )
    width = (
        f"{c.step_s:.3f} s/step {'measured with its data' if measured else 'estimated'} -> {c.steps} steps; "
        f"{spent}; the widest of {list(search.BASES)} with >= {min_steps}"
    )
    out = {"patch": patch, "width": width}
    if devices > 1:
        out["devices"] = (
            f"DDP over {devices} GPUs: each trains on its share of the cases with the planned batch "
            f"(an effective batch {devices}x as large); steps planned for one GPU (the gradient exchange is not probed)"
        )
    return out
