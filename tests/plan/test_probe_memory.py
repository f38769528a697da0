"""The probe memory (seg.plan.memory): a re-plan of the same data on the same machine reads the kept figures and
gives the same plan however the machine drifts; a busy machine plans from quiet figures and keeps none of its
own; ``--reprobe`` measures again and plans from the median of the kept figures."""

from __future__ import annotations

import json
import logging
import os
import random
import time

import pytest
import yaml

from seg.plan import cost, machine, memory
from seg.plan.fingerprint import cost_key
from seg.plan.planfile import plan_yaml
from seg.plan.planner import make_plan
from tests.plan.conftest import modelled_step, use_model

# how fast the machine is in each of five runs: the drift between runs that five quiet hippocampus plans met on
# the development VM (a width-8 step read 0.24-0.33 s), with each probe's own +-10 % jitter on top
DRIFT = (1.0, 1.3, 0.8, 1.25, 0.85)


def drifting(run: int, factor: float = 1.0):
    rng = random.Random(run)

    def step(net, cand, levels, in_ch, out_ch, device):
        t = modelled_step(net, cand, levels, in_ch, out_ch, device) * factor
        return cost.aggregate([t * rng.uniform(0.9, 1.1) for _ in range(cost.REPS)])

    return step


def choice_figures() -> dict:
    """The kept figures a plan's choice reads (not the timings of the chosen step, ``memory.NOW_SLOT``, nor the
    runs' steps, ``memory.RUN_SLOT``)."""
    rows = next(iter(json.loads(memory.memory_path().read_text()).values()))
    return {k: v for k, v in rows.items() if not k.startswith((memory.NOW_SLOT, memory.RUN_SLOT))}


def age(seconds: float) -> None:
    """Every kept figure ``seconds`` older."""
    path = memory.memory_path()
    data = json.loads(path.read_text())
    for rows in data.values():
        for kept in rows.values():
            for row in kept:
                row[0] -= seconds
    path.write_text(json.dumps(data))


def _plan(root, tmp_path, **kw):
    p = make_plan(root, "unet", "20m", "cpu", cache=tmp_path / "fp.json", progress=False, **kw)
    return p, (tuple(p.patch), p.base, p.members, p.precision, p.channels_last)


def test_pins():
    assert memory.KEEP == 5 and memory.MAX_AGE_DAYS == 30 and memory.FILE_NAME == "probes.json"
    assert memory.NOW_HOURS == 3 and memory.NOW_SLOT == "now | " and memory.BUSY_SLOT == " | busy"
    assert memory.RUN_SLOT == "run | " and memory.step_id("k") == memory.step_id("k") != memory.step_id("k2")
    assert len(memory.step_id("k")) == 16


def test_the_runs_steps_of_a_plan_in_the_last_hours_give_their_median(monkeypatch):
    """seg-train keeps a planned run's own step (seg.run.steps); the next plan reads the median of the runs of
    the last NOW_HOURS, a busy machine's apart, none older; with the memory off nothing is kept or read."""
    monkeypatch.setenv("SEG_PROBE_MEMORY", "1")
    assert memory.ProbeMemory("cpu").run_step("abc") is None
    for s in (0.26, 0.30, 0.25):
        memory.ProbeMemory("cpu").keep_run_step("abc", s)
    mem = memory.ProbeMemory("cpu")
    assert mem.run_step("abc") == 0.26 and mem.ran == (3, 0.26) and mem.run_step("other") is None
    assert "the median of 3 runs of this plan in the last 3 h (0.260 s a step" in mem.describe()
    assert memory.ProbeMemory("cpu", busy=True).run_step("abc") is None  # a busy plan reads a busy machine's runs
    memory.ProbeMemory("cpu", busy=True).keep_run_step("abc", 0.9)
    assert (
        memory.ProbeMemory("cpu", busy=True).run_step("abc") == 0.9
        and memory.ProbeMemory("cpu").run_step("abc") == 0.26
    )
    age(memory.NOW_HOURS * 3600 + 60)
    assert memory.ProbeMemory("cpu").run_step("abc") is None  # another hour's speed
    memory.ProbeMemory("cpu").keep_run_step("abc", 0.27)
    assert memory.ProbeMemory("cpu").run_step("abc") == 0.27
    monkeypatch.setenv("SEG_PROBE_MEMORY", "0")
    before = memory.memory_path().read_text()
    off = memory.ProbeMemory("cpu")
    off.keep_run_step("abc", 5.0)
    assert off.run_step("abc") is None and memory.memory_path().read_text() == before


def test_the_steps_a_plan_buys_come_from_the_median_of_the_chosen_steps_timings_of_the_last_hours(monkeypatch):
    """One timing of seconds reads the minute it ran in (the development VM read the same training step at 0.22
    and 0.285 s a minute apart): a plan's steps come from the median of the chosen step's timings of the last
    NOW_HOURS, the training probe's kept figure included; an older timing does not count; busy timings apart."""
    monkeypatch.setenv("SEG_PROBE_MEMORY", "1")
    mem = memory.ProbeMemory("cpu")
    mem.record("train k", lambda: {"step_s": 0.22, "val_case_s": 1.0})  # the training probe, kept
    got = [memory.ProbeMemory("cpu").time_now("train k", lambda v=v: v) for v in (0.24, 0.30, 0.23)]
    # the median with the probe's 0.22: one slow minute (0.30) moves nothing
    assert got == pytest.approx([0.23, 0.24, 0.235])
    last = memory.ProbeMemory("cpu")
    assert last.time_now("train k", lambda: 0.50) == 0.24 and last.timed_now == 0.50
    assert "the chosen step timed now (0.500 s)" in last.describe() and "5 timings of the last 3 h (0.240 s)" in (
        last.describe()
    )
    age(memory.NOW_HOURS * 3600 + 60)
    assert memory.ProbeMemory("cpu").time_now("train k", lambda: 0.40) == 0.40  # the others are another hour's
    busy = memory.ProbeMemory("cpu", busy=True)
    assert busy.time_now("train k", lambda: 0.90) == 0.90  # a busy machine's timings are read apart
    assert memory.ProbeMemory("cpu").time_now("train k", lambda: 0.44) == pytest.approx(0.42)


def test_five_drifting_runs_give_one_plan_from_memory_and_several_without(synth_root, tmp_path, monkeypatch):
    monkeypatch.setenv("SEG_PROBE_MEMORY", "1")
    plans, measured = set(), []
    for run, factor in enumerate(DRIFT):
        use_model(monkeypatch, drifting(run, factor))
        p, key = _plan(synth_root, tmp_path)
        plans.add(key)
        measured.append(p.memory)
    assert len(plans) == 1, plans
    assert not measured[0].startswith("no probe measured") and "read from the probe memory" not in measured[0]
    assert all(m.startswith("no probe measured") and "read from the probe memory" in m for m in measured[1:])
    # the guard: the same drift with the memory off moves the plan
    monkeypatch.setenv("SEG_PROBE_MEMORY", "0")
    plans = set()
    for run, factor in enumerate(DRIFT):
        use_model(monkeypatch, drifting(run, factor))
        plans.add(_plan(synth_root, tmp_path)[1])
    assert len(plans) > 1


def test_busy_plans_agree_and_a_quiet_plan_replaces_their_figures(synth_root, tmp_path, monkeypatch):
    monkeypatch.setenv("SEG_PROBE_MEMORY", "1")
    busy = machine.Load(2, 1.0)

    def plan(run, factor, load):
        use_model(monkeypatch, drifting(run, factor))
        monkeypatch.setattr(machine, "measure_load", lambda seconds=0: load)
        return _plan(synth_root, tmp_path)

    # five plans beside the same load, on an empty memory: the first measures (its figures kept apart as a
    # busy machine's), the other four read them: one plan, though each run's probes read 2.5-3.5x slow
    first, slowed = plan(0, 3.0, busy)
    assert first.busy and "kept apart as a busy machine's" in first.memory
    for run, factor in enumerate((2.5, 3.5, 2.7, 3.3), 1):
        p, key = plan(run, factor, busy)
        assert key == slowed and p.memory.startswith("no probe measured") and "a busy machine's" in p.memory
    # a quiet plan does not read busy figures: it measures, keeps its own, and plans for the quiet machine
    q, quiet = plan(5, 1.0, machine.Load(2, 0.0))
    assert quiet != slowed and not q.memory.startswith("no probe measured")
    # busy plans after it read the quiet figures first: the quiet plan, nothing measured; they keep only their
    # timings of the chosen step for the steps they buy, apart (memory.time_now)
    kept = choice_figures()
    for run in range(6, 9):
        p, key = plan(run, 3.0, busy)
        assert key == quiet and p.busy and p.memory.startswith("no probe measured")
    assert choice_figures() == kept
    now = [k for k in next(iter(json.loads(memory.memory_path().read_text()).values())) if k.startswith("now | ")]
    assert now and all(k.endswith(memory.BUSY_SLOT) for k in now if "busy" in k)


def test_a_dataset_copied_anew_reads_its_kept_figures(synth_root, synth_copy, tmp_path, monkeypatch):
    """The training probe is keyed by the cases' shapes and spacings, not by the files' paths or times: a
    dataset copied anew (CI's data is, every session) plans from its kept figures; a dataset whose shapes
    changed measures again."""
    monkeypatch.setenv("SEG_PROBE_MEMORY", "1")
    for d in "ab":
        (tmp_path / d).mkdir()
    use_model(monkeypatch, drifting(0))
    first, choice = _plan(synth_root, tmp_path / "a")
    later = time.time() + 3600
    for f in synth_copy.rglob("*.nii.gz"):
        os.utime(f, (later, later))
    use_model(monkeypatch, drifting(1, 1.3))
    again, same = _plan(synth_copy, tmp_path / "b")
    assert same == choice and again.memory.startswith("no probe measured"), again.memory
    fp_a = json.loads((tmp_path / "a" / "fp.json").read_text())
    fp_b = json.loads((tmp_path / "b" / "fp.json").read_text())
    assert fp_a["key"] != fp_b["key"] and cost_key(fp_a) == cost_key(fp_b)
    fp_b["cases"][0]["shape"] = [32, 32, 33]
    assert cost_key(fp_b) != cost_key(fp_a)


def test_reprobe_measures_again_and_plans_from_the_median_of_the_kept_figures(synth_root, tmp_path, monkeypatch):
    monkeypatch.setenv("SEG_PROBE_MEMORY", "1")
    calls = {"n": 0}

    def counted(factor):
        def step(*a):
            calls["n"] += 1
            return modelled_step(*a) * factor

        return step

    for factor in (1.0, 2.0, 1.1, 1.2, 0.9, 1.05, 3.0):
        use_model(monkeypatch, counted(factor))
        n = calls["n"]
        p, _ = _plan(synth_root, tmp_path, reprobe=True)
        assert calls["n"] > n  # measured again
    rows = next(iter(json.loads(memory.memory_path().read_text()).values()))
    assert rows and all(1 <= len(r) <= memory.KEEP for r in rows.values())
    # a plan without --reprobe reads those medians: it measures one thing, the chosen candidate's training step,
    # so the choice is the kept one and the steps it says the budget buys are this hour's
    use_model(monkeypatch, counted(1.0))
    n = calls["n"]
    today, choice = _plan(synth_root, tmp_path)
    assert calls["n"] == n + 1 and today.memory.startswith("no probe measured")
    assert "the chosen step timed now" in today.memory
    age(memory.NOW_HOURS * 3600 + 60)  # hours later the machine is 5x slower: the steps follow it, not the choice
    use_model(monkeypatch, counted(5.0))
    slow, same = _plan(synth_root, tmp_path)
    assert same == choice and slow.steps < today.steps / 3


def test_reprobe_keeps_the_last_five_figures_and_returns_their_median(monkeypatch):
    monkeypatch.setenv("SEG_PROBE_MEMORY", "1")
    got = [
        memory.ProbeMemory("cpu", reprobe=True).figure("k", lambda v=v: v)
        for v in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 100.0)
    ]
    assert got == [1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0]  # the median of the last five at most
    assert memory.ProbeMemory("cpu").figure("k", lambda: 0.0) == 5.0  # read, not measured


def test_figures_older_than_max_age_are_measured_again(tmp_path, monkeypatch):
    monkeypatch.setenv("SEG_PROBE_MEMORY", "1")
    mem = memory.ProbeMemory("cpu")
    assert mem.figure("k", lambda: 2.0) == 2.0
    assert memory.ProbeMemory("cpu").figure("k", lambda: 9.0) == 2.0  # kept
    data = json.loads(mem.path.read_text())
    for rows in data.values():
        rows["k"][0][0] = time.time() - (memory.MAX_AGE_DAYS + 1) * 86400
    mem.path.write_text(json.dumps(data))
    assert memory.ProbeMemory("cpu").figure("k", lambda: 9.0) == 9.0  # too old: measured again


def test_an_unreadable_memory_is_one_warning_and_the_plan_is_made(synth_root, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("SEG_PROBE_MEMORY", "1")
    path = memory.memory_path()
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    use_model(monkeypatch)
    with caplog.at_level(logging.WARNING):
        p, _ = _plan(synth_root, tmp_path)
    lines = [r.getMessage() for r in caplog.records if "probe memory" in r.getMessage()]
    assert len(lines) == 1 and str(path) in lines[0] and "unreadable" in lines[0]
    assert json.loads(path.read_text())  # rewritten whole with this plan's figures
    doc = yaml.safe_load(plan_yaml(p, "seg-plan x"))
    assert doc["planned"]["probes"] == p.memory and "kept in" in p.memory


def test_seg_plan_reprobe_flag_reaches_the_planner(synth_root, tmp_path, monkeypatch, capsys):
    from seg.cli.plan import main

    monkeypatch.setenv("SEG_PROBE_MEMORY", "1")
    use_model(monkeypatch)
    out = tmp_path / "p.yaml"
    assert main([str(synth_root), "--budget", "20m", "-o", str(out), "-q"]) == 0
    assert main([str(synth_root), "--budget", "20m", "-o", str(out), "-q"]) == 0
    assert "probe memory: no probe measured" in capsys.readouterr().out
    assert main([str(synth_root), "--budget", "20m", "-o", str(out), "-q", "--reprobe"]) == 0
    text = capsys.readouterr().out
    assert "probe memory: no probe measured" not in text and "probe memory: " in text


def test_a_new_dataset_on_a_known_machine_sets_its_training_step_against_a_bare_step_of_the_same_hour(
    synth_root, tmp_path, monkeypatch
):
    """The bare figures come from the memory (another day's speed), the training probe is measured now (a
    dataset not seen before): the data cost is their difference, so the bare step is timed now too, and the
    plan reads the data cost a plan without the memory reads. Without it, on a machine twice as fast as the day
    the figures were kept, the data cost read 0 (clamped)."""
    from seg.plan import planner, search

    seen = []
    real_search = search.search

    def spy(probes, *a, **k):
        seen.append(probes.data_s_per_voxel)
        return real_search(probes, *a, **k)

    def data_cost(factor, memory_on):
        monkeypatch.setenv("SEG_PROBE_MEMORY", "1" if memory_on else "0")
        use_model(monkeypatch, lambda *a: modelled_step(*a) * factor)
        seen.clear()
        p, _ = _plan(synth_root, tmp_path)
        return p, next(v for v in seen if v is not None)

    monkeypatch.setattr(search, "search", spy)
    data_cost(1.0, True)  # the known machine's figures, kept
    monkeypatch.setattr(planner, "cost_key", lambda fp: "another dataset of the same shapes")
    p, known = data_cost(0.5, True)  # today twice as fast; the choice stays the kept figures' (by design)
    assert "read from the probe memory" in p.memory and known > 0
    _, fresh = data_cost(0.5, False)
    assert abs(known / fresh - 1) < 1e-6
