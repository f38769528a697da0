"""The machine a plan is made for: its cores, how busy other processes keep them, and the memory a run may use.

A probe is a timing, and a timing on a shared CPU follows whatever else runs (a multi-threaded step's threads wait
for each other at every barrier; docs/planning.md has the figures). seg-plan therefore measures the other processes'
load before probing (over seg-plan's imports where the command opened :func:`load_window`) and says once when the
machine is busy, and what the plan may lose by it."""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from seg.config import available_cores, bf16_supported, cpu_has_bf16  # noqa: F401  (the planner's names)
from seg.plan.settings import SETTINGS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Load:
    cores: int  # the cores this process may use
    others: float  # cores' worth of CPU time other processes used during the sample (machine-wide)

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


class Reading(NamedTuple):
    busy: float  # the whole machine's busy jiffies, from /proc/stat's first line
    total: float  # ... and all of them
    own_s: float  # CPU seconds of this process (every thread) and of its children waited for
    at: float  # time.monotonic()


def _reading() -> Reading | None:
    try:
        with open("/proc/stat") as f:
            fields = [float(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = time.process_time() + kids.ru_utime + kids.ru_stime
    return Reading(sum(fields) - idle, sum(fields), own, time.monotonic())


_window: list[Reading] = []  # where load_window opened one


@contextlib.contextmanager
def load_window() -> Iterator[None]:
    """The next :func:`measure_load` samples from here (seg-plan opens it before its imports, which then fill the
    sample instead of a sleep); closed on leaving, used or not."""
    start = _reading()
    _window[:] = [start] if start else []
    try:
        yield
    finally:
        _window.clear()


def measure_load(seconds: float | None = None) -> Load:
    """Other processes' CPU use over at least ``seconds`` (default ``load_sample_s``): the machine's busy cores
    less this process's own (its threads and the children it waited for), from :func:`load_window`'s start
    where one is open, sleeping what is left of ``seconds``."""
    cores = available_cores()
    a = _window.pop() if _window else _reading()
    if a is None:
        return Load(cores, 0.0)
    left = (SETTINGS.load_sample_s if seconds is None else seconds) - (time.monotonic() - a.at)
    if left > 0:
        time.sleep(left)
    b = _reading()
    if b is None or b.total <= a.total or b.at <= a.at:
        return Load(cores, 0.0)
    busy = (b.busy - a.busy) / (b.total - a.total) * (os.cpu_count() or cores)
    return Load(cores, max(0.0, busy - (b.own_s - a.own_s) / (b.at - a.at)))


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
