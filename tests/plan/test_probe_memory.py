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

from seg.plan import machine, memory, timing
from seg.plan.fingerprint import cost_key
from seg.plan.planfile import plan_yaml
from seg.plan.planner import make_plan
from seg.plan.settings import SETTINGS
from tests.plan.conftest import commands_use, modelled, modelled_step

# how fast the machine is in each of five runs: the drift between runs that five quiet hippocampus plans met on
# the development VM (a width-8 step read 0.24-0.33 s), with each probe's own +-10 % jitter on top
DRIFT = (1.0, 1.3, 0.8, 1.25, 0.85)


def drifting(run: int, factor: float = 1.0):
    rng = random.Random(run)

    def step(net, cand, levels, in_ch, out_ch, device):
        t = modelled_step(net, cand, levels, in_ch, out_ch, device) * factor
        return timing.aggregate([t * rng.uniform(0.9, 1.1) for _ in range(SETTINGS.bare_reps)])

    return step


def choice_figures() -> dict:
    """The kept figures (every one of them is read by a plan's choice)."""
    return next(iter(json.loads(memory.memory_path().read_text()).values()))


def age(seconds: float) -> None:
    """Every kept figure ``seconds`` older."""
    path = memory.memory_path()
    data = json.loads(path.read_text())
    for rows in data.values():
        for kept in rows.values():
            for row in kept:
                row[0] -= seconds
    path.write_text(json.dumps(data))


def _plan(root, tmp_path, instruments, **kw):
    p = make_plan(
        root, budget="20m", device="cpu", instruments=instruments, cache=tmp_path / "fp.json", progress=False, **kw
    )
    return p, (tuple(p.patch), p.base, p.members, p.precision, p.channels_last)


def test_pins():
    assert SETTINGS.keep == 5 and SETTINGS.max_age_days == 30 and memory.FILE_NAME == "probes.json"
    assert memory.BUSY_SLOT == " | busy"


def test_five_drifting_runs_give_one_plan_from_memory_and_several_without(synth_root, tmp_path, monkeypatch):
    monkeypatch.setenv("SEG_PROBE_MEMORY", "1")
    plans, measured = set(), []
    for run, factor in enumerate(DRIFT):
        p, key = _plan(synth_root, tmp_path, modelled(drifting(run, factor)))
        plans.add(key)
        measured.append(p.memory)
    assert len(plans) == 1, plans
    assert not measured[0].startswith("no probe measured") and "read from the probe memory" not in measured[0]
    assert all(m.startswith("no probe measured") and "read from the probe memory" in m for m in measured[1:])
    # the guard: the same drift with the memory off moves the plan
    monkeypatch.setenv("SEG_PROBE_MEMORY", "0")
    plans = set()
    for run, factor in enumerate(DRIFT):
        plans.add(_plan(synth_root, tmp_path, modelled(drifting(run, factor)))[1])
    assert len(plans) > 1


def test_busy_plans_agree_and_a_quiet_plan_replaces_their_figures(synth_root, tmp_path, monkeypatch):
    monkeypatch.setenv("SEG_PROBE_MEMORY", "1")
    busy = machine.Load(2, 1.0)

    def plan(run, factor, load):
        return _plan(synth_root, tmp_path, modelled(drifting(run, factor), load=load))

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
    # busy plans after it read the quiet figures first: the quiet plan, nothing measured, nothing kept
    kept = choice_figures()
    for run in range(6, 9):
        p, key = plan(run, 3.0, busy)
        assert key == quiet and p.busy and p.memory.startswith("no probe measured")
    assert choice_figures() == kept


def test_a_dataset_copied_anew_reads_its_kept_figures(synth_root, synth_copy, tmp_path, monkeypatch):
    """The training probe is keyed by the cases' shapes and spacings, not by the files' paths or times: a
    dataset copied anew (CI's data is, every session) plans from its kept figures; a dataset whose shapes
    changed measures again."""
    monkeypatch.setenv("SEG_PROBE_MEMORY", "1")
    for d in "ab":
        (tmp_path / d).mkdir()
    first, choice = _plan(synth_root, tmp_path / "a", modelled(drifting(0)))
    later = time.time() + 3600
    for f in synth_copy.rglob("*.nii.gz"):
        os.utime(f, (later, later))
    again, same = _plan(synth_copy, tmp_path / "b", modelled(drifting(1, 1.3)))
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
        n = calls["n"]
        p, _ = _plan(synth_root, tmp_path, modelled(counted(factor)), reprobe=True)
        assert calls["n"] > n  # measured again
    rows = next(iter(json.loads(memory.memory_path().read_text()).values()))
    assert rows and all(1 <= len(r) <= SETTINGS.keep for r in rows.values())
    # a plan without --reprobe reads those medians and measures nothing: the kept choice and the kept forecast,
    # however fast the machine is today; the forecast is the median of the step's kept timings, with their range
    n = calls["n"]
    today, choice = _plan(synth_root, tmp_path, modelled(counted(1.0)))
    assert calls["n"] == n and today.memory.startswith("no probe measured")
    slow, same = _plan(synth_root, tmp_path, modelled(counted(5.0)))
    assert same == choice and (slow.steps, slow.steps_range, slow.step_s) == (
        today.steps,
        today.steps_range,
        today.step_s,
    )
    lo, hi = today.steps_range
    # the last 5 of the 7 timings are kept (0.9x-3x the model's bare step, the data cost unscaled on top)
    assert today.timings == SETTINGS.keep and lo < today.steps < hi and 2.0 < hi / lo < 3.0 / 0.9
    assert f"{today.steps} steps ({lo}-{hi} over 5 timings)" in today.reasons["width"]


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

    def aged(days: float) -> None:
        for rows in data.values():
            rows["k"][0][0] = time.time() - days * 86400
        mem.path.write_text(json.dumps(data))

    aged(SETTINGS.max_age_days - 1)
    assert memory.ProbeMemory("cpu").figure("k", lambda: 9.0) == 2.0  # 29 days old: still kept
    aged(SETTINGS.max_age_days + 1)
    assert memory.ProbeMemory("cpu").figure("k", lambda: 9.0) == 9.0  # 31 days: too old, measured again


def test_an_unreadable_memory_is_one_warning_and_the_plan_is_made(synth_root, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("SEG_PROBE_MEMORY", "1")
    path = memory.memory_path()
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with caplog.at_level(logging.WARNING):
        p, _ = _plan(synth_root, tmp_path, modelled())
    lines = [r.getMessage() for r in caplog.records if "probe memory" in r.getMessage()]
    assert len(lines) == 1 and str(path) in lines[0] and "unreadable" in lines[0]
    assert json.loads(path.read_text())  # rewritten whole with this plan's figures
    doc = yaml.safe_load(plan_yaml(p, "seg-plan x"))
    assert doc["planned"]["probes"] == p.memory and "kept in" in p.memory


def test_seg_plan_reprobe_flag_reaches_the_planner(synth_root, tmp_path, monkeypatch, capsys):
    from seg.cli.plan import main

    monkeypatch.setenv("SEG_PROBE_MEMORY", "1")
    commands_use(monkeypatch, modelled())
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

    def spy(steps, inp):
        seen.append(inp.model.data_s_per_voxel)
        return real_search(steps, inp)

    def data_cost(factor, memory_on):
        monkeypatch.setenv("SEG_PROBE_MEMORY", "1" if memory_on else "0")
        seen.clear()
        p, _ = _plan(synth_root, tmp_path, modelled(lambda *a: modelled_step(*a) * factor))
        return p, next(v for v in seen if v is not None)

    monkeypatch.setattr(planner, "search", spy)
    data_cost(1.0, True)  # the known machine's figures, kept
    monkeypatch.setattr(planner, "cost_key", lambda fp: "another dataset of the same shapes")
    p, known = data_cost(0.5, True)  # today twice as fast; the choice stays the kept figures' (by design)
    assert "read from the probe memory" in p.memory and known > 0
    _, fresh = data_cost(0.5, False)
    assert abs(known / fresh - 1) < 1e-6


def test_two_plans_at_once_each_keep_their_figures(monkeypatch):
    """R19: both read the memory before either saved; the one that saves last keeps the other's figures too."""
    monkeypatch.setenv("SEG_PROBE_MEMORY", "1")
    a, b = memory.ProbeMemory("cpu"), memory.ProbeMemory("cpu")
    a.figure("probe a", lambda: 1.0)
    b.figure("probe b", lambda: 2.0)
    a.figure("probe shared", lambda: 3.0)
    b.figure("probe shared", lambda: 5.0)
    later = memory.ProbeMemory("cpu")
    assert later.figure("probe a", lambda: 9.0) == 1.0 and later.figure("probe b", lambda: 9.0) == 2.0
    assert later.figure("probe shared", lambda: 9.0) == 4.0  # the median of both plans' figures


@pytest.mark.parametrize(
    "rows",
    [
        "text instead of rows",
        [[1, 2, 3]],
        [["yesterday", 1.0]],
        [[None, 1.0]],
        [[0.0, "abc"]],
        [[0.0, 0.0]],
        [[0.0, float("nan")]],
        [[0.0, {"step_s": "x"}]],
    ],
    ids=["text", "three", "time-text", "time-none", "figure-text", "figure-zero", "figure-nan", "record-text"],
)
def test_figures_of_the_wrong_form_are_measured_again_with_one_warning(monkeypatch, caplog, rows):
    """R15: valid JSON of the wrong shape, or 0/NaN/text figures, in the memory: measured again, one warning."""
    monkeypatch.setenv("SEG_PROBE_MEMORY", "1")
    mem = memory.ProbeMemory("cpu")
    assert mem.figure("k", lambda: 2.0) == 2.0
    data = json.loads(mem.path.read_text())
    for key in data:
        data[key]["k"] = (
            [[time.time(), r[1]] if isinstance(r, list) and r and r[0] == 0.0 else r for r in rows]
            if isinstance(rows, list)
            else rows
        )
    mem.path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        again = memory.ProbeMemory("cpu")
        assert again.figure("k", lambda: 5.0) == 5.0
    said = [r for r in caplog.records if "wrong form" in r.getMessage()]
    assert len(said) == 1 and str(mem.path) in said[0].getMessage()


def test_a_machine_entry_of_the_wrong_shape_is_replaced(monkeypatch):
    monkeypatch.setenv("SEG_PROBE_MEMORY", "1")
    mem = memory.ProbeMemory("cpu")
    mem.path.parent.mkdir(parents=True, exist_ok=True)
    mem.path.write_text(json.dumps({mem._machine: [1, 2, 3]}))
    assert memory.ProbeMemory("cpu").figure("k", lambda: 3.0) == 3.0
    assert memory.ProbeMemory("cpu").figure("k", lambda: 9.0) == 3.0  # kept this time
