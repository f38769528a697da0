"""A planned run keeps its own step for the next plan of the same data (seg.run.steps, seg.plan.memory's run
slot): only a run of the plan as written; the next plan buys its steps from it instead of timing the step."""

from __future__ import annotations

import json
import logging

import pytest
from hydra import compose, initialize_config_dir

from seg.cli.args import plan_overrides
from seg.config import CONF_DIR
from seg.plan import memory
from seg.plan.planfile import plan_yaml
from seg.plan.planner import make_plan
from seg.run import steps
from seg.run.train import train
from tests.plan.conftest import use_model


def test_pin():
    assert steps.MIN_RUN_STEPS == 200


def _runs(sid: str) -> list[float]:
    rows = next(iter(json.loads(memory.memory_path().read_text()).values()))
    return [v for _, v in rows.get(memory.RUN_SLOT + sid, [])]


def _train(path, out, *extra):
    args = plan_overrides(
        [
            f"plan={path}",
            f"paths.output_dir={out}",
            "+trainer.max_steps=6",  # not a value the step was timed with: the run keeps its step
            "~callbacks.rich_progress_bar",
            "trainer.enable_model_summary=false",
            *extra,
        ]
    )
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        return train(compose("train", overrides=args))


def test_a_run_of_a_plan_keeps_its_step_and_the_next_plan_buys_its_steps_from_it(
    synth_root, tmp_path, monkeypatch, caplog
):
    monkeypatch.setenv("SEG_PROBE_MEMORY", "1")
    monkeypatch.setattr(steps, "MIN_RUN_STEPS", 4)
    use_model(monkeypatch, bf16=False)
    plan = make_plan(synth_root, "unet", "20m", "cpu", cache=tmp_path / "fp.json", progress=False)
    path = tmp_path / "p.yaml"
    path.write_text(plan_yaml(plan, "seg-plan test"))
    assert len(plan.step_id) == 16 and f'step_id: "{plan.step_id}"' in path.read_text()

    caplog.set_level(logging.INFO, logger="seg.train")
    _train(path, tmp_path / "r1")
    (kept,) = _runs(plan.step_id)
    assert kept > 0 and any("kept for the next plan" in r.message for r in caplog.records)

    again = make_plan(synth_root, "unet", "20m", "cpu", cache=tmp_path / "fp.json", progress=False)
    assert again.step_id == plan.step_id and (again.patch, again.base) == (plan.patch, plan.base)
    assert again.step_s == round(kept, 4) and abs(again.steps - again.budget.train_s / kept) <= 1
    assert "1 run of this plan" in again.memory and "timed now" not in again.memory  # no timing: the run's step

    caplog.clear()
    _train(path, tmp_path / "r2", "data.batch_size=1", "model.channels_last=false")  # not the plan's: nothing kept
    assert _runs(plan.step_id) == [kept]
    assert any("data.batch_size, model.channels_last: not the plan's" in r.message for r in caplog.records), caplog.text

    monkeypatch.setattr(steps, "MIN_RUN_STEPS", 7)  # a run shorter than that keeps nothing
    _train(path, tmp_path / "r3")
    assert _runs(plan.step_id) == [kept]


@pytest.mark.parametrize(
    "have, differ",
    [
        ({}, []),
        ({"data": {"patch_size": [16, 16, 16]}}, ["data.patch_size"]),
        ({"data": {"normalize": {"nonzero": True}}}, ["data.normalize.nonzero"]),
        ({"trainer": {"precision": "bf16"}}, ["trainer.precision"]),
    ],
)
def test_the_differences_are_every_leaf_of_timed_with_the_run_has_otherwise(have, differ):
    from omegaconf import OmegaConf

    timed = {
        "data": {"patch_size": [16, 16, 20], "normalize": {"mode": "zscore", "nonzero": False}},
        "trainer": {"precision": "fp32"},
    }
    cfg = OmegaConf.merge(OmegaConf.create(timed), OmegaConf.create({"data": {"batch_size": 2}}), have)
    assert steps.differences(cfg, OmegaConf.create(timed)) == differ
