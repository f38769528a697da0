"""Plans that hold: they compose to the device they were made for, pay validation and start-up out of the
budget, do not follow a noisy probe, re-measure what contradicts itself, and say when the machine is busy."""

from __future__ import annotations

import logging
import math
import random
from dataclasses import replace

import pytest
import yaml
from hydra import compose, initialize_config_dir

from seg.cli.args import plan_overrides
from seg.config import CONF_DIR, UserError, available_cores, configure_threads
from seg.plan import machine, planner, timing
from seg.plan.planfile import plan_yaml
from seg.plan.planner import Budget, choose_pipeline, make_plan
from seg.plan.records import Candidate
from seg.plan.settings import SETTINGS
from tests.plan.conftest import modelled, modelled_step, modelled_training


# -- the budget ------------------------------------------------------------------------------------------
def test_budget_pays_start_up_and_every_validation_out_of_the_budget():
    b = Budget(1200, 1, val_s=20.0, startup_s=30.0)
    assert b.interval_s == 120  # a tenth of the budget
    assert b.max_time_s == 1200 - 30 - 20  # the final validation and the start-up follow max_time
    assert b.validations == 1150 // (120 + 20)  # each starts an interval after the last one ended
    assert b.train_s == 1150 - 8 * 20
    assert b.max_time_s + b.startup_s + b.val_s <= b.budget_s


def test_a_long_validation_pass_is_spaced_by_its_share():
    """#45: a whole scan's validation pass took 217 s and a 20-minute member validated 3 times (651 s). Periodic
    validation takes at most validation_share (0.2) of the training: the interval is at least 4x a pass (a 32-s
    pass: 128 s, over the tenth's 120)."""
    assert SETTINGS.validation_share == 0.2 and Budget(1200, val_s=32.0).interval_s == 128
    scan = Budget(1200, 1, val_s=217.0, startup_s=24.0)
    assert scan.validations == 0 and scan.train_s == 1200 - 24 - 217
    from seg.plan.planfile import _interval_reason

    assert _interval_reason(Budget(1200, val_s=32.0)) == (
        "a validation pass takes 32 s: spaced so that validating takes at most 20% of the training"
    )
    assert _interval_reason(scan).startswith("every 16 min 29 s: stretched so that no validation runs past max_time")


def test_no_periodic_validation_runs_past_max_time():
    """#45: Lightning starts a validation whenever the interval has passed: a 10-minute proxy run started a 149-s
    pass at 7:28 of its 7:45 max_time, then the final one (2.5 minutes over its budget). The interval is stretched
    so that every periodic validation ends before max_time and the next would start validation_margin_s (30 s)
    after it; the ones that fit stay."""
    assert SETTINGS.validation_margin_s == 30.0
    run = Budget(600, 1, val_s=112.4, startup_s=22.0)
    assert run.max_time_s == 465 and run.interval_s == 495 and run.validations == 0
    for budget in (300, 600, 1200, 2400, 6000):
        for val_s in (0.5, 2.0, 20.0, 31.0, 60.0, 112.4, 217.0):
            b = Budget(budget, 1, val_s=val_s, startup_s=20.0)
            n, i, t = b.validations, b.interval_s, b.max_time_s
            assert n * (i + val_s) <= t and (n + 1) * i + n * val_s >= t + 30, (budget, val_s)
    # the tenth of the budget stays where nothing straddles: 8 passes of 20 s end by 1120 of 1150, the 9th at 1240
    assert Budget(1200, 1, val_s=20.0, startup_s=30.0).interval_s == 120


def test_budget_pins():
    assert SETTINGS.validation_every_min_s == 60 and Budget(300).interval_s == 60  # at most once a minute
    assert SETTINGS.validation_parts == 10 and Budget(6000).interval_s == 600  # a tenth of the budget
    assert SETTINGS.min_budget_s == 60 and SETTINGS.startup_s == 12.0 and SETTINGS.loop_overhead_s == 0.006
    assert SETTINGS.train_share == 0.85 and Budget(600).train_s == 510  # unmeasured: the old share
    assert SETTINGS.min_max_time_s == 30 and Budget(100, val_s=60.0, startup_s=30.0).max_time_s == 30
    # an ensemble's members each pay a share of its two validations of the mean softmax
    e = Budget(3600, 3, val_s=10.0, startup_s=20.0)
    assert e.member_s == 1200 and e.max_time_s == 1200 - 20 - 10 - 20


def test_validation_interval_reason_says_which_rule_holds():
    from seg.plan.planfile import _interval_reason

    assert _interval_reason(Budget(1200)) == "validation every tenth of the budget (2 min)"
    short = _interval_reason(Budget(300))  # a tenth would be 30 s: once a minute holds
    assert short.startswith("validation every minute") and "(30 s)" in short
    assert planner.human_duration(90) == "1 min 30 s"  # a 90 s budget is not printed as "1 min"


def test_budget_below_a_minute_is_refused():
    with pytest.raises(UserError, match="at least 60 s"):
        planner.parse_budget("30s")


def test_planned_steps_are_the_budgets_training_time_over_the_measured_step(synth_root, tmp_path):
    plan = make_plan(
        synth_root, budget="10m", device="cpu", instruments=modelled(), cache=tmp_path / "fp.json", progress=False
    )
    b = plan.budget
    assert b.val_s == pytest.approx(0.5 * math.ceil(8 / 5))  # the modelled 0.5 s per validation case
    assert plan.steps == pytest.approx(b.train_s / plan.step_s, rel=1e-3)  # step_s is rounded to 0.1 ms
    assert b.max_time_s + b.val_s + b.startup_s <= 600


# -- the device ------------------------------------------------------------------------------------------
def _compose(plan, tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(plan_yaml(plan, "test"))
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        return compose("train", overrides=plan_overrides([f"plan={path}", f"paths.output_dir={tmp_path}"]))


def test_a_plan_for_cuda_composes_to_the_gpu(synth_root, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present: the plan would be measured")
    plan = make_plan(synth_root, budget="20m", device="cuda", cache=tmp_path / "fp.json", progress=False)
    cfg = _compose(plan, tmp_path)
    assert cfg.trainer.accelerator == "cuda" and cfg.trainer.devices == 1 and "strategy" not in cfg.trainer
    assert cfg.planned.device == "cuda" and cfg.data.pipeline == "device"  # 8 tiny cases fit any GPU


def test_devices_plans_ddp_and_says_so(synth_root, tmp_path):
    plan = make_plan(synth_root, budget="20m", device="cuda", cache=tmp_path / "fp.json", progress=False, devices=2)
    cfg = _compose(plan, tmp_path)
    assert cfg.trainer.devices == 2 and cfg.trainer.strategy == "ddp" and "DDP over 2 GPUs" in plan.reasons["devices"]


def test_the_default_trainer_uses_a_gpu_when_one_is_present(tmp_path):
    from tests.conftest import compose_train

    assert compose_train([], tmp_path).trainer.accelerator == "auto"
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        gpu = compose("train", overrides=["trainer=gpu", f"paths.output_dir={tmp_path}"])
    assert gpu.trainer.accelerator == "gpu" and gpu.trainer.precision == "fp32"


def test_pipeline_is_device_when_the_cached_cases_fit():
    d = {"full": [40, 56, 40], "voxels": [36 * 50 * 35] * 200, "channels": 1}
    share = SETTINGS.device_cache_share
    pipe, why = choose_pipeline(*d.values(), memory_gb=100.0, device="cuda", share=share)
    assert pipe == "device" and "GB" in why
    assert choose_pipeline(*d.values(), memory_gb=0.1, device="cuda", share=share)[0] == "workers"
    # 200 cases padded to the 40x56x40 patch, image + label float32: 0.14 GB, against half the memory
    assert share == 0.5 and choose_pipeline(*d.values(), memory_gb=0.29, device="cpu", share=share)[0] == "device"
    pipe, why = choose_pipeline(*d.values(), memory_gb=0.28, device="cpu", share=share)
    assert pipe == "workers" and why.endswith("worker processes reading the on-disk cache (data.cache=disk)")


# -- noise and load ---------------------------------------------------------------------------------------
def noisy(seed: int, reps: int | None = None):
    """The modelled step, each timed sample off by up to +-10 % (a quiet machine's jitter measured here was
    +-5 %) and one in six a burst of load at 3x, drawn and aggregated as the real probe draws (until
    ``timing.settled``) and aggregates its samples. Each
    timing draws from its own stream (the seed, the candidate, how often it was timed), so which probes a plan
    takes, and in which order, changes no other probe's noise."""
    counts: dict = {}

    def step(net, cand, levels, in_ch, out_ch, device):
        true = modelled_step(net, cand, levels, in_ch, out_ch, device)
        counts[cand] = counts.get(cand, 0) + 1
        rng = random.Random(f"{seed} {cand} {counts[cand]}")
        samples: list[float] = []
        while not timing.settled(samples, reps):
            samples.append(true * (3.0 if rng.random() < 1 / 6 else rng.uniform(0.9, 1.1)))
        return timing.aggregate(samples)

    return step


def test_the_same_plan_from_a_noisy_probe(synth_root, tmp_path, monkeypatch):
    plans = set()
    for seed in range(5):
        m = modelled(noisy(seed))
        p = make_plan(synth_root, budget="20m", device="cpu", instruments=m, cache=tmp_path / "fp.json", progress=False)
        plans.add((tuple(p.patch), p.base, p.members, p.precision, p.channels_last))
    assert len(plans) == 1, plans


def test_a_probe_is_the_median_of_its_5_timed_steps():
    """Not the minimum (a lucky step) nor the mean (one burst of load moves it)."""
    assert SETTINGS.bare_reps == 5
    assert timing.aggregate([0.30, 0.10, 0.20, 0.90, 0.25]) == 0.25


def test_the_median_is_what_makes_it_hold(synth_root, tmp_path, monkeypatch):
    """Guard for the test above: with one sample per probe (the aggregate a single draw) the plans differ."""
    plans = set()
    for seed in range(5):
        m = modelled(noisy(seed, reps=1))
        p = make_plan(synth_root, budget="20m", device="cpu", instruments=m, cache=tmp_path / "fp.json", progress=False)
        plans.add((tuple(p.patch), p.base, p.members, p.precision))
    assert len(plans) > 1


def test_a_thinner_net_measured_slower_is_measured_again(synth_root, tmp_path, monkeypatch):
    """Width 4 once measured 4x slower (a burst of load): re-measured, it no longer stops the width search."""
    calls = {"n": 0}

    def step(net, cand, levels, in_ch, out_ch, device):
        t = modelled_step(net, cand, levels, in_ch, out_ch, device)
        if cand.base == 4 and calls["n"] == 0:
            calls["n"] += 1
            return 4 * t
        return t

    fp = tmp_path / "fp.json"
    quiet = make_plan(synth_root, budget="20m", device="cpu", instruments=modelled(), cache=fp, progress=False)
    bumpy = make_plan(synth_root, budget="20m", device="cpu", instruments=modelled(step), cache=fp, progress=False)
    assert calls["n"] == 1 and (bumpy.patch, bumpy.base) == (quiet.patch, quiet.base)
    assert SETTINGS.monotone_slack == 1.05


@pytest.mark.parametrize("ratio, again", [(1.04, False), (1.06, True)])
def test_a_contradiction_is_measured_again_only_past_the_5_percent_slack(ratio, again):
    """monotone_slack 1.05: width 4 read 1.04x width 8's step is noise and kept; 1.06x is timed again (both)."""
    from seg.plan.search import BareSteps

    timed = []

    def timer(cand, levels):
        timed.append(cand.base)
        return {8: 1.0, 4: ratio}[cand.base] if len(timed) <= 2 else 0.5

    steps = BareSteps(timer)
    assert steps.monotone_slack == SETTINGS.monotone_slack == 1.05
    for base in (8, 4):
        steps.bare(Candidate(base, (32, 32, 32), 2, "fp32", True), 3)
    assert (steps.remeasured, len(timed)) == ((1, 4) if again else (0, 2))


def test_a_busy_machine_is_named_once_with_what_the_plan_may_lose(synth_root, tmp_path, monkeypatch, caplog):
    m = modelled(load=machine.Load(2, 1.0))
    with caplog.at_level(logging.WARNING):
        plan = make_plan(
            synth_root, budget="20m", device="cpu", instruments=m, cache=tmp_path / "fp.json", progress=False
        )
    lines = [r.getMessage() for r in caplog.records if "busy" in r.getMessage()]
    assert len(lines) == 1 and "narrower net" in lines[0] and "Re-plan when it is quiet" in lines[0]
    assert plan.busy and yaml.safe_load(plan_yaml(plan, "x"))["planned"]["busy"] is True
    assert SETTINGS.busy_cores == 0.5 and not machine.Load(2, 0.49).busy and machine.Load(2, 0.5).busy


def test_measure_load_sees_a_busy_process():
    import subprocess
    import sys

    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        assert machine.measure_load(1.0).others > 0.6
    finally:
        spin.kill()


def test_the_load_is_the_machines_busy_cores_less_this_process_own(monkeypatch):
    """seg-plan samples the load over its own imports (``load_window``): the machine's busy cores less this
    process's CPU, with no sleep where the window already lasts ``load_sample_s`` (1 s), the rest slept where not."""
    R, slept = machine.Reading, []
    monkeypatch.setattr(machine.time, "sleep", slept.append)
    # 2 CPUs, 4 s: 560 of 800 jiffies busy (2.8 s) = 1.4 cores, 3.2 s of them this process's = 0.8: 0.6 others'
    readings = iter([R(100, 1000, 5.0, 10.0), R(660, 1800, 8.2, 14.0)])
    monkeypatch.setattr(machine, "_reading", lambda: next(readings))
    monkeypatch.setattr(machine.os, "cpu_count", lambda: 2)
    with machine.load_window():
        load = machine.measure_load()
    assert load.others == pytest.approx(0.6) and load.busy and slept == []
    readings = iter([R(0, 0, 0.0, 10.0), R(150, 400, 0.5, 11.0)])  # a window 0.3 s old when measured
    monkeypatch.setattr(machine.time, "monotonic", lambda: 10.3)
    with machine.load_window():
        load = machine.measure_load()
    assert slept == [pytest.approx(SETTINGS.load_sample_s - 0.3)] and SETTINGS.load_sample_s == 1.0
    assert load.others == pytest.approx(0.25)  # 150 of 400 jiffies on 2 CPUs = 0.75 cores, 0.5 of them its own
    monkeypatch.setattr(machine, "_reading", lambda: R(0, 0, 0.0, 0.0))
    with machine.load_window():
        assert machine._window
    assert machine._window == []  # closed on leaving, used or not


def test_a_waited_for_childs_cpu_is_this_process_own():
    """A child process this one waited for (a pool's worker) counts as this process's own CPU, not as another's
    load."""
    import subprocess
    import sys

    before = machine._reading()
    spin = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass"
    subprocess.run([sys.executable, "-c", spin], check=True)
    assert machine._reading().own_s - before.own_s >= 0.45


# -- threads ---------------------------------------------------------------------------------------------
def test_threads_are_the_cores_this_process_may_use_or_seg_threads(monkeypatch):
    import os

    import torch

    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
        monkeypatch.delenv("SEG_THREADS", raising=False)
        assert available_cores() == 1 and configure_threads() == 1 == torch.get_num_threads()
        monkeypatch.setenv("SEG_THREADS", "2")
        assert configure_threads() == 2 == torch.get_num_threads()
        monkeypatch.setenv("SEG_THREADS", "zero")
        with pytest.raises(UserError, match="SEG_THREADS"):
            configure_threads()
    finally:
        torch.set_num_threads(before)


def test_the_planned_step_is_the_training_probes_plus_the_loops_seconds(synth_root, tmp_path, monkeypatch):
    """Lightning's loop costs seconds a step (``LOOP_OVERHEAD_S``), not a share of it: as 10 % of the step it
    overcharged the hippocampus' 0.22-0.29 s step (six runs stepped at 0.90-1.16x the probe's step, the loop
    included)."""
    monkeypatch.setenv("SEG_PROBE_MEMORY", "0")
    seen = []

    def probe(*a, **k):
        seen.append(modelled_training(*a, **k))
        return seen[-1]

    m = modelled(training=probe)
    p = make_plan(synth_root, budget="20m", device="cpu", instruments=m, cache=tmp_path / "fp.json", progress=False)
    assert seen and p.step_s == pytest.approx(seen[-1].step_s + 0.006, abs=1e-4)


def test_a_choice_near_a_probed_one_takes_its_data_cost_instead_of_a_probe(tmp_path):
    """A training probe whose data cost is a step's (0.05 s whatever the patch, as on whole scans): its first
    round moves the choice from 40x40x48 to 40x40x40 (the per-voxel charge), within ``calibration_near`` (1.25x
    the voxels) of the probed one, so that probe's data cost stands for it (its own a step, not scaled down):
    one probe instead of two, the same plan and step; the plan says the step was modelled."""
    from seg.data.synthetic import write_dataset
    from seg.plan.records import TrainingCost

    assert SETTINGS.calibration_near == 1.25
    root = write_dataset(tmp_path / "scans", n=6, seed=5, shape=(96, 72, 44))
    probed = []

    def per_step(root, ids, data, net, cand, levels, channels, device):
        probed.append(cand.patch)
        return TrainingCost(modelled_step(net, cand, levels, *channels, device) + 0.05, 0.5, 0.02)

    plans, seen = {}, {}
    for near in (1.0, 1.25):
        probed.clear()
        plans[near] = make_plan(
            root, budget="10m", resolution="full", instruments=modelled(training=per_step), progress=False,
            cache=tmp_path / "fp.json", settings=replace(SETTINGS, calibration_near=near), reprobe=True,
        )  # fmt: skip
        seen[near] = list(probed)
    measured, near = plans[1.0], plans[1.25]
    assert seen == {1.0: [(40, 40, 48), (40, 40, 40)], 1.25: [(40, 40, 48)]}
    assert (near.patch, near.base, near.steps) == (measured.patch, measured.base, measured.steps)
    assert near.step_s == pytest.approx(measured.step_s, rel=1e-9)
    assert near.reasons["width"].startswith(f"{near.step_s:.3f} s/step modelled from the training probe at 40x40x48")
    assert near.timings == 0 and "modelled from a neighbouring patch" in plan_yaml(near, "x")


def test_a_near_choice_whose_modelled_step_misses_the_floor_is_probed(tmp_path):
    """A data cost of 0.1 s a step: the choice lands near a probed one, but with that probe's cost a step it
    would not buy the floor, so it is probed after all (its own step, one kept timing)."""
    from seg.data.synthetic import write_dataset
    from seg.plan.records import TrainingCost

    root = write_dataset(tmp_path / "scans", n=6, seed=5, shape=(96, 72, 44))
    probed = []

    def per_step(root, ids, data, net, cand, levels, channels, device):
        probed.append(cand.patch)
        return TrainingCost(modelled_step(net, cand, levels, *channels, device) + 0.1, 0.5, 0.02)

    plan = make_plan(
        root, budget="10m", resolution="full", instruments=modelled(training=per_step), progress=False,
        cache=tmp_path / "fp.json",
    )  # fmt: skip
    assert probed == [(40, 40, 48), (32, 40, 40), (32, 32, 40)] and tuple(plan.patch) == (32, 32, 40)
    assert plan.timings == 1 and "measured with its data" in plan.reasons["width"]
