"""Modelled probes for the planner's tests: deterministic and quick, so a test of the search does not depend
on the machine's speed or load (a real probe is timed in tests/plan/test_probe.py only)."""

from __future__ import annotations

import math

import pytest

from seg.plan import cost, machine, planner
from seg.plan.probe import TrainingCost

# the modelled real step costs this much more than the bare one (the calibrated data cost), and validating a
# case and caching one take these seconds
DATA_S_PER_VOXEL = 0.5e-6
VAL_CASE_S = 0.5
CACHE_CASE_S = 0.02


def modelled_step(net, cand, levels, in_ch, out_ch, device):
    """0.2 s for a width-8 step of two 40^3 patches in fp32, linear in voxels and width; bf16 at 0.75x,
    channels-first 1.2x."""
    s = 0.2 * math.prod(cand.patch) * cand.batch / (2 * 40**3) * cand.base / 8
    return s * (0.75 if cand.precision == "bf16" else 1.0) * (1.0 if cand.channels_last else 1.2)


def modelled_training(root, case_ids, data, net, cand, levels, channels, device, step=modelled_step):
    bare = step(net, cand, levels, *channels, device)
    return TrainingCost(bare + DATA_S_PER_VOXEL * cand.batch * math.prod(cand.patch), VAL_CASE_S, CACHE_CASE_S)


def use_model(monkeypatch, step=modelled_step, bf16: bool = True) -> None:
    """The planner's probes replaced by ``step`` (and the training probe by its model), a quiet machine."""
    monkeypatch.setattr(cost, "measure_step", step)
    monkeypatch.setattr(cost, "bf16_supported", lambda device: bf16)
    monkeypatch.setattr(planner, "training_probe", lambda *a, **k: modelled_training(*a, **k, step=step))
    monkeypatch.setattr(machine, "measure_load", lambda seconds=0: machine.Load(2, 0.0))


@pytest.fixture
def modelled_probe(monkeypatch):
    use_model(monkeypatch)
