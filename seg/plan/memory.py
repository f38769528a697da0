"""Probe memory: the figures seg-plan measured on this machine, kept so that planning the same data again gives
the same plan, and so that a busy machine plans from quiet figures instead of its own slowed ones.

A timing on a shared machine moves with the load and from minute to minute, slower than a probe can average away,
and a plan near a decision's line would flip with it (docs/planning.md has the figures). So seg-plan keeps what it
measures on a quiet machine (one file per user, :func:`memory_path`), keyed by the machine (CPU model, the cores
this process may use, torch threads and version, the GPU) and by the probe (net, width, levels, patch, batch,
precision, memory format, channels; the training probe also by the cases' shapes and spacings,
``fingerprint.cost_key``, and the planned data settings), and plans from the **median of the kept figures**:

- a probe with kept figures is not measured again: the same request on the same machine gives the same plan,
  its forecast included, and plans in seconds. The plan prints its steps as the median and the range of the
  chosen training step's kept timings (how far one timing of this machine moves, not a promise);
- a probe without one is measured and kept. A busy machine's figures are the load's as much as the
  machine's: they are kept apart and read only by busy plans, and only where no quiet figure is kept (so
  five plans beside the same load agree, and the first quiet plan measures again); a busy plan reads the
  quiet figures first;
- ``seg-plan --reprobe`` measures every probe again; the new figure joins the kept ones of its kind (the
  last ``keep`` of ``seg.plan.settings``; the plan takes their median).

Figures older than ``max_age_days`` are dropped. ``SEG_CACHE_DIR`` (default ``$XDG_CACHE_HOME/seg`` or
``~/.cache/seg``) names the folder; ``SEG_PROBE_MEMORY=0`` turns the memory off (every probe measured, none
kept). Nothing here is needed to train or predict: deleting the file only makes the next plan measure again.
Why not a library: neither MONAI nor Lightning keeps timings between runs; this is a JSON file of medians.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from seg.config import available_cores, finite_number
from seg.io import cache_root
from seg.plan.settings import SETTINGS

log = logging.getLogger(__name__)

FILE_NAME = "probes.json"
BUSY_SLOT = " | busy"  # a busy machine's figures are kept apart, read only where no quiet figure is kept


def memory_path() -> Path:
    """The probe memory's file: ``$SEG_CACHE_DIR/probes.json`` (default ``$XDG_CACHE_HOME/seg`` or ``~/.cache/seg``)."""
    return cache_root() / FILE_NAME


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
    _values: dict = field(default_factory=dict)  # key -> the kept figures its median came from, in this run
    _fresh: set = field(default_factory=set)  # keys measured in this run: a second call measures again
    _read_keys: set = field(default_factory=set)  # keys read from the memory in this run
    _data: dict = field(default_factory=dict)
    _machine: str = ""
    _said_bad: bool = False

    def __post_init__(self) -> None:
        self.on = self.on and enabled()
        self.path = self.path or memory_path()
        self._machine = machine_key(self.device)
        if self.on:
            self._data = self._read()

    def _read(self, quiet: bool = False) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            if not quiet:  # said once, when the plan starts; the save replaces it
                log.warning("probe memory %s is unreadable (%s): measuring every probe again", self.path, e)
            return {}
        return data if isinstance(data, dict) else {}

    def _kept(self, key: str) -> list[list]:
        """``key``'s figures of this machine that are fresh and well formed; a row of another shape (or a figure
        that is 0, NaN or text) is dropped, said once (the memory is a file a user can edit)."""
        now = time.time()
        slot = self._data.get(self._machine) if isinstance(self._data, dict) else None
        rows = slot.get(key, []) if isinstance(slot, dict) else []
        rows = rows if isinstance(rows, list) else [rows]
        good = [r for r in rows if _well_formed(r)]
        if len(good) < len(rows) and not self._said_bad:
            self._said_bad = True
            log.warning("probe memory %s: figures of the wrong form dropped (measured again)", self.path)
        return [r for r in good if now - r[0] <= SETTINGS.max_age_days * 86400]

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
            value = measure()
            self._values[key] = [clean(value)]
            return value
        slots = [key, key + BUSY_SLOT] if self.busy else [key]  # quiet figures first; a busy run's own last
        if not self.reprobe and key not in self._fresh:
            for slot in slots:
                if kept := self._kept(slot):
                    self.used += 1
                    self._read_keys.add(key)
                    self.used_busy += slot != key
                    self.oldest = min(self.oldest or kept[0][0], kept[0][0])
                    self._values[key] = [clean(v) for _, v in kept]
                    return median(self._values[key])
        value = measure()
        self.measured += 1
        self._fresh.add(key)
        kept = self._add(slots[-1], value, time.time())
        self._values[key] = [clean(v) for _, v in kept]
        return median(self._values[key])

    def was_read(self, key: str) -> bool:
        """Whether ``key``'s figure came from the memory in this run (not measured)."""
        return key in self._read_keys

    def values(self, key: str) -> list:
        """The figures ``key``'s median was taken from in this run (kept and new; one where the memory is off)."""
        return list(self._values.get(key, []))

    def _add(self, slot: str, value, now: float) -> list[list]:
        """Keep ``value`` (timed ``now``) in ``slot`` beside its last figures (at most ``keep``), save the
        memory, and return the slot's figures. The file is read again under a lock and this figure merged into
        it: two plans at once each keep their figures (the one that saved last no longer drops the other's)."""
        try:
            with self._lock():
                if self.on:
                    self._data = self._read(quiet=True)
                kept = [*self._kept(slot), [now, value]][-SETTINGS.keep :]
                if not isinstance(self._data.get(self._machine), dict):
                    self._data[self._machine] = {}
                self._data[self._machine][slot] = kept
                self._save()
        except OSError as e:  # the lock cannot be made (a read-only home): as a failed save
            self._unwritable(e)
            kept = [*self._kept(slot), [now, value]][-SETTINGS.keep :]
        return kept

    @contextlib.contextmanager
    def _lock(self):
        """An exclusive lock beside the file (``probes.json.lock``, never followed through a link)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _save(self) -> None:
        from seg.io import write_text

        try:
            write_text(self.path, json.dumps(self._data, indent=0, sort_keys=True))
        except OSError as e:
            self._unwritable(e)

    def _unwritable(self, e: OSError) -> None:
        """A read-only home: plan without keeping (said once)."""
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
        return "; ".join(parts) + "; seg-plan --reprobe measures again"


def _figure(x) -> bool:
    return finite_number(x) and x >= 0


def _well_formed(row) -> bool:
    """``[time, figure]``: a figure is a positive seconds count, or (the training probe's) a mapping of them."""
    if not (isinstance(row, list) and len(row) == 2 and _figure(row[0])):
        return False
    v = row[1]
    return (_figure(v) and v > 0) or (isinstance(v, dict) and bool(v) and all(_figure(x) for x in v.values()))
