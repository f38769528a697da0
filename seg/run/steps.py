"""A planned run's own step, kept for the next plan of the same data.

A plan's steps come from a timing of seconds (``seg.plan.probe``), and on a machine whose speed drifts from
minute to minute that timing reads one minute's speed: on the development VM the plans' timings of one step
read 0.22-0.295 s while six 20-minute runs of it stepped at 0.256-0.269 s. The run's own step is the better
figure, so seg-train keeps it: when the run trains a plan as written (every value of the plan's
``planned.timed_with`` in its config: data, net, memory format, device, precision), on one device, for at least
:data:`MIN_RUN_STEPS` steps, its seconds per step over its training (``seg.lit.callbacks.StepClock``) go into
the probe memory under the plan's ``planned.step_id`` (``seg.plan.memory``), and the next plan of that data on
this machine in the following hours buys its steps from the median of the runs' steps. Other processes' load
is measured for a second before training, as seg-plan does: a busy machine's step is kept apart.
``SEG_PROBE_MEMORY=0`` turns it off with the rest of the memory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from omegaconf import OmegaConf

from seg.config import to_plain
from seg.lit.callbacks import StepClock
from seg.plan import machine, memory

log = logging.getLogger("seg.train")

MIN_RUN_STEPS = 200  # fewer steps are mostly the first ones (warm-up, caches): not kept


def differences(cfg, timed_with) -> list[str]:
    """The dotted paths of ``timed_with`` whose value the run's ``cfg`` does not have."""
    want = to_plain(OmegaConf.to_container(timed_with, resolve=True) if OmegaConf.is_config(timed_with) else timed_with)
    out: list[str] = []

    def walk(node, path: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{path}.{k}" if path else str(k))
            return
        have = OmegaConf.select(cfg, path, default=None)
        have = to_plain(OmegaConf.to_container(have, resolve=True) if OmegaConf.is_config(have) else have)
        if have != node:
            out.append(path)

    walk(want, "")
    return out


@dataclass
class RunStep:
    """What :func:`finish` needs: the plan's step id, the device, whether other processes were busy, the clock."""

    sid: str
    device: str
    busy: bool
    clock: StepClock = field(default_factory=StepClock)


def start(cfg, device: str) -> RunStep | None:
    """A :class:`RunStep` (add its ``clock`` to the trainer's callbacks) when this run keeps its step, else None."""
    planned = cfg.get("planned") or {}
    sid, timed_with = planned.get("step_id"), planned.get("timed_with")
    if not sid or timed_with is None or not memory.enabled():
        return None
    if differ := differences(cfg, timed_with):
        log.info("this run's %s: not the plan's, so its step is not kept for the next plan", ", ".join(differ))
        return None
    busy = device == "cpu" and machine.measure_load().busy
    return RunStep(str(sid), device, busy)


def finish(run: RunStep | None, world_size: int = 1) -> float | None:
    """Keep the run's step in the probe memory (see the module docstring); the step kept, or None."""
    if run is None or world_size > 1 or run.clock.steps < MIN_RUN_STEPS or run.clock.step_s is None:
        return None
    mem = memory.ProbeMemory(run.device, busy=run.busy)
    mem.keep_run_step(run.sid, run.clock.step_s)
    if not mem.on:
        return None
    log.info(
        "%.3f s a step over %d steps: kept for the next plan of this data (%s%s)",
        run.clock.step_s,
        run.clock.steps,
        mem.path,
        ", a busy machine's" if run.busy else "",
    )
    return run.clock.step_s
