"""Probe memory: the figures seg-plan measured on this machine, kept so that planning the same data again gives
the same plan, and so that a busy machine plans from quiet figures instead of its own slowed ones.

A timing on a shared machine moves with the load and from minute to minute. On the 2-core development VM five
quiet runs of ``seg-plan ../shared/data/hippocampus --budget 20m`` read a width-8 step of 0.24-0.33 s, which
bought 3304-4490 steps, either side of the 4000-step line: the plan's width moved between 4 and 8 from one run
to the next. A median over more steps inside one run does not help against that: the drift is slower than a
probe. So seg-plan keeps what it measures on a quiet machine (one file per user, :func:`memory_path`), keyed
by the machine (CPU model, the cores this process may use, torch threads and version, the GPU) and by the
probe (net, width, levels, patch, batch, precision, memory format, channels; the training probe also by the
cases' shapes and spacings, ``fingerprint.cost_key``, and the planned data settings), and plans from the
**median of the kept figures**:

- a probe with kept figures is not measured again: the same request on the same machine gives the same plan
  (and plans in seconds). Only the chosen candidate's training step is timed once more, for the steps the
  plan says the budget buys: the choice is the kept one, the step count this hour's (the median of that
  step's timings of the last :data:`NOW_HOURS`, kept apart from the figures the choice reads; see
  :meth:`ProbeMemory.time_now`), or, when runs of that plan ended in those hours, the median of the
  runs' own steps (:meth:`ProbeMemory.keep_run_step`: what the steps a run makes follow);
- a probe without one is measured and kept. A busy machine's figures are the load's as much as the
  machine's: they are kept apart and read only by busy plans, and only where no quiet figure is kept (so
  five plans beside the same load agree, and the first quiet plan measures again); a busy plan reads the
  quiet figures first;
- ``seg-plan --reprobe`` measures every probe again; the new figure joins the kept ones of its kind (the
  last :data:`KEEP`; the plan takes their median).

Figures older than :data:`MAX_AGE_DAYS` are dropped. ``SEG_CACHE_DIR`` (default ``$XDG_CACHE_HOME/seg`` or
``~/.cache/seg``) names the folder; ``SEG_PROBE_MEMORY=0`` turns the memory off (every probe measured, none
kept). Nothing here is needed to train or predict: deleting the file only makes the next plan measure again.
Why not a library: neither MONAI nor Lightning keeps timings between runs; this is a JSON file of medians.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from seg.config import available_cores

log = logging.getLogger(__name__)

KEEP = 5  # figures kept per probe (the newest); the plan reads their median
MAX_AGE_DAYS = 30  # older figures are dropped (a new torch, BIOS or neighbour may have changed the machine)
FILE_NAME = "probes.json"
BUSY_SLOT = " | busy"  # a busy machine's figures are kept apart, read only where no quiet figure is kept
NOW_SLOT = "now | "  # the chosen step's timings for the steps a plan buys (time_now), kept apart from the choice's
NOW_HOURS = 3  # a plan's steps: the median of the chosen step's timings of the last 3 hours, this one included
RUN_SLOT = "run | "  # seg-train's own step of a plan it trained as written (keep_run_step), by the plan's step id


def step_id(key: str) -> str:
    """A short id of a training probe's key, which a plan file carries (``planned.step_id``) so that seg-train
    can keep its own step under it."""
    import hashlib

    return hashlib.sha256(key.encode()).hexdigest()[:16]


def memory_path() -> Path:
    """The probe memory's file: ``$SEG_CACHE_DIR/probes.json`` (default ``$XDG_CACHE_HOME/seg`` or ``~/.cache/seg``)."""
    root = os.environ.get("SEG_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "seg"
    return Path(root) / FILE_NAME


def enabled() -> bool:
    return os.environ.get("SEG_PROBE_MEMORY", "1").strip().lower() not in ("0", "false", "no", "off")


def machine_key(device: str) -> str:
    """What makes two machines time a probe alike: CPU model, usable cores, torch threads and version, GPU."""
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    parts = [cpu, f"cores {available_cores()}", f"threads {torch.get_num_threads()}", f"torch {torch.__version__}"]
    if device == "cuda" and torch.cuda.is_available():
        parts.append(torch.cuda.get_device_name(0))
    return f"{device} | " + " | ".join(parts)


@dataclass
class ProbeMemory:
    """The kept figures of one machine (see the module docstring). ``busy``: this run's figures are kept apart;
    ``reprobe``: every probe is measured again. ``used`` and ``measured`` count this run's probes."""

    device: str
    busy: bool = False
    reprobe: bool = False
    path: Path | None = None
    on: bool = True
    used: int = 0
    used_busy: int = 0
    measured: int = 0
    oldest: float | None = None
    timed_now: float | None = None  # the chosen candidate's training step, timed in this run (see time_now)
    timed_recent: tuple[int, float] | None = None  # how many timings of the last NOW_HOURS, and their median
    ran: tuple[int, float] | None = None  # how many runs' own steps of the last NOW_HOURS, and their median
    _fresh: set = field(default_factory=set)  # keys measured in this run: a second call measures again
    _read_keys: set = field(default_factory=set)  # keys read from the memory in this run
    _data: dict = field(default_factory=dict)
    _machine: str = ""

    def __post_init__(self) -> None:
        self.on = self.on and enabled()
        self.path = self.path or memory_path()
        self._machine = machine_key(self.device)
        if self.on:
            self._data = self._read()

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            log.warning("probe memory %s is unreadable (%s): measuring every probe again", self.path, e)
            return {}
        return data if isinstance(data, dict) else {}

    def _kept(self, key: str) -> list[list]:
        now = time.time()
        rows = self._data.get(self._machine, {}).get(key, [])
        return [r for r in rows if isinstance(r, list) and len(r) == 2 and now - r[0] <= MAX_AGE_DAYS * 86400]

    def figure(self, key: str, measure: Callable[[], float]) -> float:
        """The probe ``key``'s figure: the median of the kept ones, or measured (and kept on a quiet machine)."""
        return self._get(key, measure, lambda v: float(v), statistics.median)

    def record(self, key: str, measure: Callable[[], dict]) -> dict:
        """As :meth:`figure` for a probe of several figures (a dict of floats): the median of each."""

        def median(values: list[dict]) -> dict:
            return {k: statistics.median(float(v[k]) for v in values) for k in values[0]}

        return self._get(key, measure, dict, median)

    def _get(self, key, measure, clean, median):
        if not self.on:
            self.measured += 1
            return measure()
        slots = [key, key + BUSY_SLOT] if self.busy else [key]  # quiet figures first; a busy run's own last
        if not self.reprobe and key not in self._fresh:
            for slot in slots:
                if kept := self._kept(slot):
                    self.used += 1
                    self._read_keys.add(key)
                    self.used_busy += slot != key
                    self.oldest = min(self.oldest or kept[0][0], kept[0][0])
                    return median([clean(v) for _, v in kept])
        value = measure()
        self.measured += 1
        self._fresh.add(key)
        kept = self._add(slots[-1], value, time.time())
        return median([clean(v) for _, v in kept])

    def was_read(self, key: str) -> bool:
        """Whether ``key``'s figure came from the memory in this run (not measured)."""
        return key in self._read_keys

    def time_now(self, key: str, measure: Callable) -> float:
        """The chosen candidate's training step for the steps a plan buys, when the choice came from kept figures.

        Timed now, and set beside this machine's other timings of the same step in the last :data:`NOW_HOURS`
        (this slot's, kept apart from the figures the choice reads, and the training probe's own): their
        median. One timing of seconds reads the minute it ran in: on the development VM the same training probe
        read 0.22 s and 0.285 s a minute apart, and a 20-minute run steps at their mixture. Older
        timings are another hour's speed and do not count (the same step read 0.233 s one night, 0.155 s the next
        morning). A busy machine's timings are kept and read apart from a quiet one's."""
        value = measure()
        step = float(value.step_s if hasattr(value, "step_s") else value)
        self.timed_now = step
        now, busy = time.time(), self._busy_suffix
        slot = NOW_SLOT + key + busy
        self._add(slot, step, now)
        probed = [float(v["step_s"]) if isinstance(v, dict) else float(v) for _, v in self._recent(key + busy, now)]
        recent = [v for _, v in self._recent(slot, now)] + probed
        self.timed_recent = (len(recent), statistics.median(recent))
        return self.timed_recent[1]

    def keep_run_step(self, sid: str, step_s: float) -> None:
        """Keep a run's own step (seconds per optimiser step over its training, validation left out, Lightning's
        loop included) of the plan whose step id is ``sid``; a busy machine's apart."""
        if self.on:
            self._add(RUN_SLOT + sid + self._busy_suffix, float(step_s), time.time())

    def run_step(self, sid: str) -> float | None:
        """The median of the steps runs of the plan ``sid`` made on this machine in the last :data:`NOW_HOURS`
        (a busy plan reads a busy machine's runs), or None without one. A run's step is the mean of thousands
        of steps over its whole training, where a plan's timing is seconds of one minute: on the development VM
        six 20-minute runs of one plan stepped at 0.256-0.269 s while the plans' timings of that step read
        0.22-0.295 s. So when a run of the plan ended in the last hours, its step, not a new timing, gives the
        steps the next plan buys."""
        if not self.on:
            return None
        now = time.time()
        steps = [float(v) for _, v in self._recent(RUN_SLOT + sid + self._busy_suffix, now)]
        if not steps:
            return None
        self.ran = (len(steps), statistics.median(steps))
        return self.ran[1]

    @property
    def _busy_suffix(self) -> str:
        """A busy machine's slots are its key's plus :data:`BUSY_SLOT`."""
        return BUSY_SLOT if self.busy else ""

    def _add(self, slot: str, value, now: float) -> list[list]:
        """Keep ``value`` (timed ``now``) in ``slot`` beside its last figures (at most :data:`KEEP`), save the
        memory, and return the slot's figures."""
        kept = [*self._kept(slot), [now, value]][-KEEP:]
        self._data.setdefault(self._machine, {})[slot] = kept
        self._save()
        return kept

    def _recent(self, slot: str, now: float) -> list[list]:
        return [r for r in self._kept(slot) if now - r[0] <= NOW_HOURS * 3600]

    def _save(self) -> None:
        from seg.io import write_text

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_text(self.path, json.dumps(self._data, indent=0, sort_keys=True))
        except OSError as e:  # a read-only home: plan without keeping (say so once)
            if self.on:
                log.warning("probe memory %s cannot be written (%s): figures not kept", self.path, e)
            self.on = False

    def describe(self) -> str:
        """One line for the plan: how many probes came from memory and how many were measured."""
        if not self.on:
            return f"{self.measured} probes measured, none kept (probe memory off)"
        since = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.oldest)) if self.oldest else None
        kept = f"kept apart as a busy machine's in {self.path}" if self.busy else f"kept in {self.path}"
        parts = [f"{self.measured} probes measured ({kept})" if self.measured else "no probe measured"]
        if self.used:
            busy = f", {self.used_busy} of them a busy machine's" if self.used_busy else ""
            parts.append(f"{self.used} read from the probe memory (the median of figures kept since {since}{busy})")
        if self.ran is not None:
            n, med = self.ran
            parts.append(
                f"the steps it buys from the median of {n} run{'s' if n > 1 else ''} of this plan in the last "
                f"{NOW_HOURS} h ({med:.3f} s a step, Lightning's loop included)"
            )
        elif self.timed_now is not None:
            n, med = self.timed_recent or (1, self.timed_now)
            parts.append(
                f"the chosen step timed now ({self.timed_now:.3f} s); the steps it buys from the median of its "
                f"{n} timing{'s' if n > 1 else ''} of the last {NOW_HOURS} h ({med:.3f} s)"
            )
        return "; ".join(parts) + "; seg-plan --reprobe measures again"
