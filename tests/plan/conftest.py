"""Modelled instruments for the planner's tests: deterministic and quick, so a test of the search does not
depend on the machine's speed or load (real probes are timed in tests/plan/test_probe.py only). A test passes
them to the planner as its one seam: ``make_plan(root, instruments=modelled(...))``."""

from __future__ import annotations

import math

from seg.plan import machine
from seg.plan.records import TrainingCost
from seg.plan.timing import Instruments

# the modelled real step costs this much more than the bare one (the calibrated data cost), and validating a
# case and caching one take these seconds
DATA_S_PER_VOXEL = 0.5e-6
VAL_CASE_S = 0.5
CACHE_CASE_S = 0.02
QUIET = machine.Load(2, 0.0)


def modelled_step(net, cand, levels, in_ch, out_ch, device):
    """0.2 s for a width-8 step of two 40^3 patches in fp32, linear in voxels and width; bf16 at 0.75x,
    channels-first 1.2x."""
    s = 0.2 * math.prod(cand.patch) * cand.batch / (2 * 40**3) * cand.base / 8
    return s * (0.75 if cand.precision == "bf16" else 1.0) * (1.0 if cand.channels_last else 1.2)


def modelled_training(root, case_ids, data, net, cand, levels, channels, device, step=modelled_step):
    bare = step(net, cand, levels, *channels, device)
    return TrainingCost(bare + DATA_S_PER_VOXEL * cand.batch * math.prod(cand.patch), VAL_CASE_S, CACHE_CASE_S)


def modelled(step=modelled_step, bf16: bool = True, load: machine.Load = QUIET, training=None) -> Instruments:
    """Instruments whose bare probe is ``step``, whose training probe is its model (or ``training``), on a
    machine with ``load`` and (not) fast bf16."""
    return Instruments(
        bare_step=step,
        training_step=training or (lambda *a, **k: modelled_training(*a, **k, step=step)),
        load=lambda: load,
        bf16=lambda device: bf16,
    )


def commands_use(monkeypatch, instruments: Instruments) -> None:
    """For a test of a command (seg-plan in process), which builds its planner itself: ``instruments`` become
    the planner's default."""
    from seg.plan import planner

    monkeypatch.setattr(planner, "Instruments", lambda: instruments)
