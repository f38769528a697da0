"""Timing on the present device: the two probes the planner measures, and the seam tests replace.

- :func:`time_bare_step`, the **bare probe**: forward + backward + optimiser step of the real network on random
  tensors of a candidate's shape (a warm-up, then the median of its timed steps: ``bare_min_reps`` of them where
  they agree within ``bare_agree``, else ``bare_reps``). Cheap, so the search can time many candidates.
- :func:`time_training_step`, the **training probe**: the chosen candidate through the planned
  ``SegDataModule`` (its pipeline, patch, batch, augmentation and workers) over a few training cases: real
  steps through its loader, the data waiting included, as a trimmed mean after a warm-up; also the
  sliding-window validation of a few whole cases and the caching of a case, so that the planner can fit the
  periodic and final validations and the start-up inside the budget.

:class:`Instruments` bundles them with the load meter and the bf16 check: the planner's one test seam.
Estimates for a device that is not present are in ``seg.plan.estimate``.
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from seg.data.datamodule import SegDataModule
from seg.lit.losses import SegLoss
from seg.nn.inferer import InfererSpec, class_index, first_output, sliding_window
from seg.nn.registry import build_sized
from seg.nn.utils import cuda_hygiene
from seg.plan import machine
from seg.plan.records import Candidate, TrainingCost
from seg.plan.settings import SETTINGS

log = logging.getLogger(__name__)


def sync(device: torch.device | str) -> None:
    """Wait for the device's queued work (a timer around asynchronous CUDA work measures nothing else)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def train_step(model, opt, loss_fn, x, y, precision: str, device: torch.device) -> None:
    """One optimiser step as training takes it (bf16 autocast when ``precision`` says so), waited for: what
    both probes time."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = loss_fn(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sync(device)


def aggregate(samples: list[float]) -> float:
    """The bare probe's figure from its timed steps: the median (one burst of load does not move it)."""
    return statistics.median(samples)


def settled(samples: list[float], reps: int | None = None) -> bool:
    """Whether a bare probe has its figure: ``reps`` timed steps (default ``bare_reps``), or, where ``reps`` is
    not set, already ``bare_min_reps`` of them within ``bare_agree`` of each other (a quiet minute: more
    steps would not move the median; one burst of load among them makes it take every step)."""
    n, s = len(samples), SETTINGS
    if n >= (reps or s.bare_reps):
        return True
    return reps is None and n >= s.bare_min_reps and max(samples) <= (1 + s.bare_agree) * min(samples)


def trimmed_mean(values: list[float], trim: float) -> float:
    """The mean of ``values`` without the lowest and highest ``trim`` share of them."""
    values = sorted(values)
    k = int(len(values) * trim)
    return statistics.fmean(values[k : len(values) - k])


# -- the bare probe -------------------------------------------------------------------------------------------
def time_bare_step(
    net: str, cand: Candidate, levels: int, in_ch: int, out_ch: int, device: str = "cpu", reps: int | None = None
) -> float:
    """Seconds of one bare training step (fwd + bwd + AdamW): the median of its timed steps after a warm-up (two
    on CUDA, where the first steps also tune cuDNN), as many as :func:`settled` asks (exactly ``reps`` where
    given). A step slower than ``bare_too_slow_s`` is returned at once: far too slow to be chosen, one sample is
    enough."""
    dev = torch.device(device)
    cuda_hygiene(dev)
    torch.manual_seed(0)
    model = build_sized(net, cand.base, levels, in_ch, out_ch).to(dev).train()
    fmt = torch.channels_last_3d if cand.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = SegLoss({"name": "dice_ce"})
    x = torch.randn(cand.batch, in_ch, *cand.patch, device=dev).contiguous(memory_format=fmt)
    # float labels, as training's loader gives them (deep supervision resizes them; nearest is not for int64 on a CPU)
    y = torch.randint(0, out_ch, (cand.batch, 1, *cand.patch), device=dev).float()
    warmup, times = 2 if dev.type == "cuda" else 1, []
    while not settled(times[warmup:], reps):
        sync(dev)
        t0 = time.perf_counter()
        train_step(model, opt, loss_fn, x, y, cand.precision, dev)
        times.append(time.perf_counter() - t0)
        if times[-1] > SETTINGS.bare_too_slow_s:
            return times[-1]
    return aggregate(times[warmup:])


# -- the training probe ---------------------------------------------------------------------------------------
def _datamodule(root: str, data: dict, cases: list[str], val: list[str], tmp: Path) -> SegDataModule:
    (tmp / "splits.json").write_text(json.dumps([{"train": cases, "val": val}]))
    return SegDataModule(root=root, splits_file=str(tmp / "splits.json"), fold=0, num_folds=2, **data)


def _training_steps(dm: SegDataModule, net, cand: Candidate, device: torch.device) -> float:
    """Seconds per step through the datamodule's own loader: the trimmed mean of ``training_steps`` after
    ``training_warmup`` (an epoch's first batch waits for its data)."""
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    loss_fn = SegLoss({"name": "dice_ce", "batch": True})
    times: list[float] = []
    loader = dm.train_dataloader()
    t_prev = time.perf_counter()
    while len(times) < SETTINGS.training_warmup + SETTINGS.training_steps:
        for batch in loader:  # a small subset: whole epochs again until enough steps (no loader left mid-way)
            x = batch["image"].as_tensor().to(device, non_blocking=True)
            y = batch["label"].as_tensor().to(device, non_blocking=True)
            if cand.channels_last:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            train_step(net, opt, loss_fn, x, y, cand.precision, device)
            now = time.perf_counter()
            times.append(now - t_prev)
            t_prev = now
    return trimmed_mean(times[SETTINGS.training_warmup :], SETTINGS.training_trim)


VALIDATION_WINDOWS = 4  # windows per axis the validation probe runs at most; a larger case is scaled from them


def _step(roi: int, overlap: float) -> int:
    """MONAI's scan step along an axis longer than the window: ``roi * (1 - overlap)``, at least one voxel."""
    return max(1, int(roi * (1 - overlap)))


def windows(shape, roi, overlap: float) -> int:
    """The sliding windows MONAI's ``sliding_window_inference`` runs over ``shape`` (its scan rule: :func:`_step`,
    the last window shifted inside; an axis no longer than the window is padded to one)."""
    from monai.data.utils import dense_patch_slices

    size = [max(s, r) for s, r in zip(shape, roi)]
    step = [r if r == s else _step(r, overlap) for s, r in zip(size, roi)]
    return len(dense_patch_slices(size, roi, step))


def validation_crop(shape, roi, overlap: float) -> tuple[tuple[slice, ...], float]:
    """A crop of ``shape`` holding at most ``VALIDATION_WINDOWS`` windows per axis, and the factor from its
    windows to the whole case's: sliding-window time is the windows' time, so a whole scan's validation is
    timed on a corner of it."""
    crop = [min(s, r + (VALIDATION_WINDOWS - 1) * _step(r, overlap)) for s, r in zip(shape, roi)]
    return tuple(slice(0, c) for c in crop), windows(shape, roi, overlap) / windows(crop, roi, overlap)


@torch.no_grad()
def _validation_s(dm: SegDataModule, net, cand: Candidate, device: torch.device) -> float:
    """Seconds to validate one whole case (sliding window at the patch, as validation does), per case: timed on
    :func:`validation_crop`'s corner of each case and scaled by its windows."""
    net.eval()
    spec = InfererSpec(roi_size=tuple(cand.patch))
    times = []
    for batch in dm.val_dataloader():
        x = batch["image"].as_tensor().to(device)
        crop, factor = validation_crop(x.shape[2:], spec.roi_size, spec.overlap)
        x = x[(..., *crop)]
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cand.precision == "bf16"):
            class_index(sliding_window(lambda t: first_output(net(t)).float(), x, spec), 1)
        sync(device)
        times.append((time.perf_counter() - t0) * factor)
    net.train()
    return statistics.median(times) if times else 0.0


def time_training_step(
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
        case_ids: the dataset's cases; the first ``training_cases`` train, the last ``training_val_cases``
            validate.
        data: the planned ``SegDataModule`` keyword arguments (pipeline, patch, batch, augmentation, ...).
        net_name, cand, levels: the planned network and candidate.
        channels: (in, out) channels.
        device: "cpu" or "cuda".
    """
    dev = torch.device(device)
    cuda_hygiene(dev)
    n_val = min(SETTINGS.training_val_cases, max(1, len(case_ids) - 1))
    val, train = case_ids[-n_val:], case_ids[: max(1, min(SETTINGS.training_cases, len(case_ids) - n_val))]
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
        *(net_name, cand.base, list(cand.patch), cand.precision, data.get("pipeline")),
        *(cost.step_s, cost.val_case_s, cost.cache_case_s),
    )
    return cost


@dataclass(frozen=True)
class Instruments:
    """What the planner measures the machine with: the bare probe, the training probe, the load meter and the
    bf16 check. The one seam through which tests model a machine (``Planner(request, instruments=...)``)."""

    bare_step: Callable[..., float] = time_bare_step
    training_step: Callable[..., TrainingCost] = time_training_step
    load: Callable[[], machine.Load] = machine.measure_load
    bf16: Callable[[str], bool] = machine.bf16_supported
