"""The training probe on real (tiny) data: a real step through the planned datamodule costs at least the bare
network's step, validation and caching are timed, on both data pipelines."""

from __future__ import annotations

import time

import pytest

from seg.plan import timing
from seg.plan.records import Candidate
from seg.plan.settings import SETTINGS


@pytest.mark.parametrize("pipeline", ["device", "workers"])
def test_training_probe_times_a_real_step_validation_and_caching(synth_root, pipeline, monkeypatch):
    from seg.data.datalist import load_dataset

    ids = [c.case_id for c in load_dataset(synth_root).cases]
    cand = Candidate(4, (16, 16, 16), 2, "fp32", True)
    data = {"patch_size": [16, 16, 16], "batch_size": 1, "num_samples": 2, "pipeline": pipeline, "num_workers": 0}
    real_step, seen = timing.train_step, []

    def step(model, opt, loss_fn, x, y, precision, device):  # the real step, then a known 20 ms more
        seen.append((tuple(x.shape), tuple(y.shape), precision))
        real_step(model, opt, loss_fn, x, y, precision, device)
        time.sleep(0.02)

    monkeypatch.setattr(timing, "train_step", step)
    tc = timing.time_training_step(str(synth_root), ids, data, "unet", cand, 3, (1, 2), "cpu")
    # every timed step is one of the loader's batches of the planned patch through the planned step, and the
    # figure holds the step's whole time (no timing race: it can only read more than the 20 ms put in)
    s = SETTINGS
    assert len(seen) >= s.training_warmup + s.training_steps
    assert set(seen) == {((2, 1, 16, 16, 16), (2, 1, 16, 16, 16), "fp32")}  # 1 case x 2 samples, the patch
    assert tc.step_s >= 0.02
    assert 0 < tc.val_case_s < 30 and 0 < tc.cache_case_s < 10


def test_the_probe_step_is_a_trimmed_mean_of_24_steps_after_4_over_14_cases():
    """Pinned (docs/planning.md): on the whole-scan proxy eight probes' first 24, 32-36 and all 72 steps were as
    far from their grand mean (3.2-3.8 % on average): the VM's drift is slower than a probe, so more steps buy
    nothing but seconds; 4 + 24 steps are two whole epochs of 14 cases in patches (one step a case) and four of
    them whole at batch 2 (the probe runs whole epochs); the fastest and slowest tenth are left out (an epoch's
    first step waits for its data)."""
    s = SETTINGS
    assert (s.training_warmup, s.training_steps, s.training_trim) == (4, 24, 0.1)
    assert (s.training_cases, s.training_val_cases, s.bare_too_slow_s) == (14, 2, 30.0)
    assert (s.training_warmup + s.training_steps) % s.training_cases == 0 == s.training_cases % 2
    # two speeds, 60/40, and one epoch-start step ten times slower: the mixture, not either speed or the outlier
    steps = [0.22] * 19 + [0.285] * 12 + [2.5]
    assert timing.trimmed_mean(steps, s.training_trim) == pytest.approx((0.22 * 16 + 0.285 * 10) / 26)
    assert timing.trimmed_mean([1.0, 2.0, 3.0], 0.1) == 2.0  # too few to leave any out


def test_a_bare_probe_stops_at_3_steps_that_agree_else_takes_5(monkeypatch):
    """Pinned (docs/planning.md): 3 timed steps within 5 % of each other are the figure (their median); one
    outside makes the probe take all 5; ``reps`` asks for exactly that many."""
    from types import SimpleNamespace

    s = SETTINGS
    assert (s.bare_reps, s.bare_min_reps, s.bare_agree) == (5, 3, 0.05)
    assert timing.settled([1.0, 1.049, 1.02]) and not timing.settled([1.0, 1.051, 1.02])
    assert not timing.settled([1.0, 1.0]) and not timing.settled([1.0, 3.0, 1.0, 1.0])
    assert timing.settled([1.0, 3.0, 1.0, 1.0, 1.0]) and not timing.settled([1.0] * 3, reps=5)
    clock = {"t": 0.0, "steps": 0, "durations": []}

    def step(*args):  # each step takes the next of the durations on a fake clock
        clock["t"] += clock["durations"][clock["steps"]]
        clock["steps"] += 1

    monkeypatch.setattr(timing, "train_step", step)
    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=lambda: clock["t"]))
    cand = Candidate(4, (16, 16, 16), 1, "fp32", True)
    for durations, taken, figure in [
        ([0.9, 0.30, 0.31, 0.30, 9.0], 4, 0.30),  # the warm-up, then 3 that agree
        ([0.9, 0.30, 0.40, 0.31, 0.30, 0.30], 6, 0.30),  # one that does not: 5, their median
    ]:
        clock.update(steps=0, durations=durations)
        assert timing.time_bare_step("unet", cand, 3, 1, 2, "cpu") == pytest.approx(figure)
        assert clock["steps"] == taken


@pytest.mark.parametrize("net", ["agunet", "daunet"])
def test_the_papers_nets_take_a_bare_step_on_a_cpu(net):
    """Their deep supervision resizes the labels: the bare probe's labels are float, as the loader's are (int64
    labels stopped `seg-plan --net agunet` on a CPU with a traceback)."""
    t = timing.time_bare_step(net, Candidate(4, (16, 16, 16), 1, "fp32", True), 3, 1, 2, "cpu", reps=1)
    assert 0 < t < SETTINGS.bare_too_slow_s


@pytest.mark.parametrize(
    "shape, roi", [((192, 144, 88), (20, 20, 20)), ((35, 50, 36), (40, 56, 40)), ((100, 37, 50), (24, 32, 16))]
)
def test_validation_is_timed_on_a_corner_and_scaled_by_monais_windows(shape, roi):
    """#45: the training probe validated whole scans window by window (13 s a case at 20^3). It times a corner of
    at most VALIDATION_WINDOWS (4) windows an axis and scales by the window count, which equals the windows MONAI's
    sliding_window_inference runs; a case with no more windows than that is timed whole."""
    import torch
    from monai.inferers import sliding_window_inference

    from seg.plan.timing import VALIDATION_WINDOWS, validation_crop, windows

    assert VALIDATION_WINDOWS == 4
    runs = []
    sliding_window_inference(torch.zeros(1, 1, *shape), roi, 1, lambda t: runs.append(1) or t, overlap=0.5)
    assert windows(shape, roi, 0.5) == len(runs)
    crop, factor = validation_crop(shape, roi, 0.5)
    corner = [c.stop for c in crop]
    assert all(windows([n], [r], 0.5) <= VALIDATION_WINDOWS for n, r in zip(corner, roi))
    assert factor == pytest.approx(len(runs) / windows(corner, roi, 0.5))
    if all(windows([n], [r], 0.5) <= VALIDATION_WINDOWS for n, r in zip(shape, roi)):
        assert corner == list(shape) and factor == 1.0
