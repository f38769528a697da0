"""The machine a plan is made for: its cores, how busy other processes keep them, and the memory a run may use.

A probe is a timing, and a timing on a shared CPU follows whatever else runs (a multi-threaded step's threads wait
for each other at every barrier; docs/planning.md has the figures). seg-plan therefore measures the other processes'
load just before probing and says once when the machine is busy, and what the plan may lose by it."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from seg.config import available_cores, bf16_supported, cpu_has_bf16  # noqa: F401  (the planner's names)
from seg.plan.settings import SETTINGS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Load:
    cores: int  # the cores this process may use
    others: float  # cores' worth of CPU time other processes used while seg-plan waited (machine-wide)

    @property
    def busy(self) -> bool:
        return self.others >= SETTINGS.busy_cores

    def warning(self) -> str:
        return (
            f"the machine is busy: other processes kept {self.others:.1f} of its cores busy while seg-plan "
            f"measured (this process may use {self.cores}). Every probe is slower than on a quiet machine, so "
            "this plan may choose a narrower net, a smaller patch or fewer ensemble members than the machine "
            "allows, and a run beside that load makes fewer steps than planned. Re-plan when it is quiet."
        )


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of the whole machine, from /proc/stat's first line."""
    try:
        with open("/proc/stat") as f:
            fields = [float(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def measure_load(seconds: float | None = None) -> Load:
    """Other processes' CPU use over ``seconds`` in which this process sleeps (so all of it is theirs)."""
    import os

    cores = available_cores()
    a = _cpu_times()
    time.sleep(SETTINGS.load_sample_s if seconds is None else seconds)
    b = _cpu_times()
    if a is None or b is None or b[1] <= a[1]:
        return Load(cores, 0.0)
    n_cpu = os.cpu_count() or cores
    return Load(cores, (b[0] - a[0]) / (b[1] - a[1]) * n_cpu)


def present(device: str) -> bool:
    """Whether probes can be timed on ``device``: the CPU, or CUDA when a GPU is present (else they are estimated)."""
    import torch

    return device == "cpu" or (device == "cuda" and torch.cuda.is_available())


def memory_gb(device: str) -> float:
    """Memory a run may use on ``device``: ``gpu_memory_share`` of the GPU's, ``ram_share`` of the available RAM."""
    import torch

    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory / 1e9 * SETTINGS.gpu_memory_share
    if device == "cuda":
        return SETTINGS.absent_gpu_gb  # an absent GPU: planned from the cost table
    try:
        with open("/proc/meminfo") as f:
            kb = int(next(line.split()[1] for line in f if line.startswith("MemAvailable")))
        return kb / 1e6 * SETTINGS.ram_share
    except (OSError, StopIteration, ValueError):
        return 8.0
