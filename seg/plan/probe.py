"""The training probe: what a planned run's step and validation really cost on this device.

The search's probes time the bare network on random tensors (cheap, so many candidates can be tried); a
run also loads, crops and augments its batches, moves them to the device and validates. For the chosen
candidate this probe builds the planned ``SegDataModule`` (its pipeline, patch, batch, augmentation and
workers) over a few training cases, and times real steps through its loader: forward, the loss, backward
and the optimiser step, the data waiting included, as a trimmed mean after a warm-up. It also times the
sliding-window validation of a few whole cases and the caching of a case, so the planner can fit the
periodic and the final validation and the start-up inside the budget.
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from seg.data.datamodule import SegDataModule
from seg.lit.losses import SegLoss
from seg.nn.inferer import InfererSpec, first_output, sliding_window
from seg.nn.registry import build_sized
from seg.nn.utils import cuda_hygiene
from seg.plan.cost import Candidate, sync, train_step

log = logging.getLogger(__name__)

PROBE_CASES = 16  # training cases the probe caches (the step's cost does not depend on how many)
PROBE_VAL_CASES = 2
# the mean of 72 steps after 4, the fastest and slowest tenth left out: a run's step count follows the mean
# step. The 2-core development VM switches between two speeds every 10-40 s (12-step medians of the
# hippocampus width-8 step: 0.22-0.24 and 0.28-0.29 s), and a median of 24 steps (7 s) read one of them. The
# longer mean does not remove the drift between minutes: eleven such probes in one half hour read 0.230-0.295
# s (memory.time_now's median over the last hours is for that). Of 8 steps, two probes of patches 20 % apart
# read 0.061 and 0.090 s.
WARMUP, STEPS, TRIM = 4, 72, 0.1


@dataclass(frozen=True)
class TrainingCost:
    """Seconds, measured: one training step with the planned data pipeline, validating one whole case,
    and loading and caching one case (the run's start-up)."""

    step_s: float
    val_case_s: float
    cache_case_s: float


def _datamodule(root: str, data: dict, cases: list[str], val: list[str], tmp: Path) -> SegDataModule:
    (tmp / "splits.json").write_text(json.dumps([{"train": cases, "val": val}]))
    return SegDataModule(root=root, splits_file=str(tmp / "splits.json"), fold=0, num_folds=2, **data)


def _training_steps(dm: SegDataModule, net, cand: Candidate, device: torch.device) -> float:
    """Seconds per step: the mean of ``STEPS`` steps after ``WARMUP`` through the datamodule's own loader, the
    fastest and the slowest ``TRIM`` of them left out (an epoch's first batch waits for its data)."""
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    loss_fn = SegLoss({"name": "dice_ce", "batch": True})
    times: list[float] = []
    loader = dm.train_dataloader()
    t_prev = time.perf_counter()
    while len(times) < WARMUP + STEPS:
        for batch in loader:  # a small subset: whole epochs again until enough steps (no loader left mid-way)
            x = batch["image"].as_tensor().to(device, non_blocking=True)
            y = batch["label"].as_tensor().to(device, non_blocking=True)
            if cand.channels_last:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            train_step(net, opt, loss_fn, x, y, cand.precision, device)
            now = time.perf_counter()
            times.append(now - t_prev)
            t_prev = now
    return trimmed_mean(times[WARMUP:], TRIM)


def trimmed_mean(values: list[float], trim: float) -> float:
    """The mean of ``values`` without the lowest and highest ``trim`` share of them."""
    values = sorted(values)
    k = int(len(values) * trim)
    return statistics.fmean(values[k : len(values) - k])


@torch.no_grad()
def _validation_s(dm: SegDataModule, net, cand: Candidate, device: torch.device) -> float:
    """Seconds to validate one whole case (sliding window at the patch, as validation does), per case."""
    net.eval()
    spec = InfererSpec(roi_size=tuple(cand.patch))
    times = []
    for batch in dm.val_dataloader():
        x = batch["image"].as_tensor().to(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cand.precision == "bf16"):
            sliding_window(lambda t: first_output(net(t)).float(), x, spec).argmax(1)
        sync(device)
        times.append(time.perf_counter() - t0)
    net.train()
    return statistics.median(times) if times else 0.0


def training_probe(
    root: str,
    case_ids: list[str],
    data: dict,
    net_name: str,
    cand: Candidate,
    levels: int,
    channels: tuple[int, int],
    device: str,
) -> TrainingCost:
    """Time the planned run's step (data included), validation and caching (see the module docstring).

    Args:
        root: the dataset.
        case_ids: the dataset's cases; the first ``PROBE_CASES`` train, the next ``PROBE_VAL_CASES`` validate.
        data: the planned ``SegDataModule`` keyword arguments (pipeline, patch, batch, augmentation, ...).
        net_name, cand, levels: the planned network and candidate.
        channels: (in, out) channels.
        device: "cpu" or "cuda".
    """
    dev = torch.device(device)
    cuda_hygiene(dev)
    n_val = min(PROBE_VAL_CASES, max(1, len(case_ids) - 1))
    val, train = case_ids[-n_val:], case_ids[: max(1, min(PROBE_CASES, len(case_ids) - n_val))]
    torch.manual_seed(0)
    net = build_sized(net_name, cand.base, levels, *channels).to(dev).train()
    if cand.channels_last:
        net = net.to(memory_format=torch.channels_last_3d)
    with tempfile.TemporaryDirectory(prefix="seg_probe_") as tmp:
        dm = _datamodule(root, data, train, val, Path(tmp))
        t0 = time.perf_counter()
        dm.setup("fit")
        cache_case_s = (time.perf_counter() - t0) / (len(train) + len(val))
        step_s = _training_steps(dm, net, cand, dev)
        val_case_s = _validation_s(dm, net, cand, dev)
    cost = TrainingCost(step_s, val_case_s, cache_case_s)
    log.info(
        "training probe %s base %d patch %s %s, %s pipeline: %.3f s/step with data, %.2f s to validate a case, "
        "%.2f s to cache one",
        net_name,
        cand.base,
        list(cand.patch),
        cand.precision,
        data.get("pipeline"),
        cost.step_s,
        cost.val_case_s,
        cost.cache_case_s,
    )
    return cost
