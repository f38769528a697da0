"""The planner's cost model: seconds per training step of a candidate (net width, patch, batch, precision).

On the present device it is measured: a short probe times forward + backward + optimiser step of the real
network on random data of the candidate's shape (a warm-up step, then the median of ``REPS``). For a
device that is not present it is an estimate: the step's FLOPs (counted by ``torch.utils.flop_counter``
on the meta device, so nothing runs) divided by the documented rate of :data:`COST_TABLE`.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from seg.lit.losses import SegLoss
from seg.nn.registry import build_sized, doubling_widths
from seg.nn.utils import cuda_hygiene

log = logging.getLogger(__name__)

# Effective training throughput (useful FLOP/s of 3D U-Net forward+backward, not peak) for planning a
# device that is not present. Estimates: a datacenter GPU of the A100 class sustains ~30-40 % of its
# dense peak on 3D convolutions (fp32 via TF32 ~50 TFLOP/s, bf16 ~100 TFLOP/s, with cuDNN);
# the CPU row is an estimate for a 2-core AVX512-BF16 VM like this project's (not measured as FLOP/s; on the
# present CPU the planner measures instead of using this table).
COST_TABLE = {
    "cuda": {"fp32": 20e12, "bf16": 35e12},
    "cpu": {"fp32": 60e9, "bf16": 90e9},
}


@dataclass(frozen=True)
class Candidate:
    base: int  # filters of the first level (the width knob)
    patch: tuple[int, ...]
    batch: int
    precision: str  # "fp32" | "bf16"
    channels_last: bool = True  # channels-last 3D memory format of the activations


def sync(device: torch.device | str) -> None:
    """Wait for the device's queued work (a timer around asynchronous CUDA work measures nothing else)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def cpu_has_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls and convolutions run natively (oneDNN), faster than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def bf16_supported(device: str) -> bool:
    if device == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return cpu_has_bf16()


def build(net: str, base: int, levels: int, in_ch: int, out_ch: int) -> torch.nn.Module:
    """The network as a plan at width ``(base, levels)`` would train it (its card's defaults)."""
    return build_sized(net, base, levels, in_ch, out_ch)


REPS = 5  # timed steps per probe after the warm-up: their median is the probe's figure


def aggregate(samples: list[float]) -> float:
    """A probe's figure from its timed steps: the median (one burst of load does not move it)."""
    return statistics.median(samples)


def train_step(model, opt, loss_fn, x, y, precision: str, device: torch.device) -> None:
    """One optimiser step as training takes it (bf16 autocast when ``precision`` says so), waited for: what
    both probes time (the bare one here, the training probe in ``seg.plan.probe``)."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = loss_fn(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sync(device)


def measure_step(
    net: str, cand: Candidate, levels: int, in_ch: int, out_ch: int, device: str = "cpu", reps: int | None = None
) -> float:
    """Seconds of one training step (fwd + bwd + AdamW), measured: the median of ``reps`` after a warm-up
    (two on CUDA, where the first steps also tune cuDNN). A step slower than 30 s is returned at once:
    far too slow to be chosen, one sample is enough."""
    dev = torch.device(device)
    cuda_hygiene(dev)
    torch.manual_seed(0)
    model = build(net, cand.base, levels, in_ch, out_ch).to(dev).train()
    fmt = torch.channels_last_3d if cand.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = SegLoss({"name": "dice_ce"})
    x = torch.randn(cand.batch, in_ch, *cand.patch, device=dev).contiguous(memory_format=fmt)
    y = torch.randint(0, out_ch, (cand.batch, 1, *cand.patch), device=dev)
    warmup = 2 if dev.type == "cuda" else 1
    reps = reps or REPS
    times = []
    for i in range(reps + warmup):
        sync(dev)
        t0 = time.perf_counter()
        train_step(model, opt, loss_fn, x, y, cand.precision, dev)
        dt = time.perf_counter() - t0
        if dt > 30:
            return dt
        if i >= warmup:
            times.append(dt)
    return aggregate(times)


def step_flops(net: str, cand: Candidate, levels: int, in_ch: int, out_ch: int) -> float:
    """FLOPs of one training step (forward + backward), counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build(net, cand.base, levels, in_ch, out_ch).train()
        x = torch.randn(cand.batch, in_ch, *cand.patch)
    counter = FlopCounterMode(display=False)
    with counter:
        out = model(x)
        out = out if isinstance(out, torch.Tensor) else sum(o.sum() for o in out)
        out.sum().backward()
    return float(counter.get_total_flops())


def estimate_step(net: str, cand: Candidate, levels: int, in_ch: int, out_ch: int, device: str) -> float:
    """Seconds of one training step on a device that is not present (an estimate from :data:`COST_TABLE`)."""
    return step_flops(net, cand, levels, in_ch, out_ch) / COST_TABLE[device][cand.precision]


def activation_gb(base: int, levels: int, patch: Sequence[int], batch: int, precision: str, in_ch: int = 1) -> float:
    """A rough training memory estimate of a U-Net: ~12 stored tensors of each level's features (two convs,
    their norms and activations, the skip and the decoder's), plus their gradients."""
    voxels = float(torch.tensor(patch).prod())
    per_level = sum(w * voxels / 8**i for i, w in enumerate(doubling_widths(base, levels)))
    bytes_per = 2 if precision == "bf16" else 4
    return 2 * 12 * per_level * batch * bytes_per / 1e9
