"""Whole scans: the cost model skips patches that cannot buy the step floor before timing them, and resolution
is a planned choice (docs/planning.md, "Resolution"): a coarser spacing where the data's plan cannot train whole
cases, refused where it would shrink the smallest label's objects too far; a low-resolution plan trains and
predicts on the input's own grid, its probabilities (not its labels) resampled."""

from __future__ import annotations

import math
import re
from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest
import yaml

from seg.plan import planner
from seg.plan.planfile import plan_yaml
from seg.plan.planner import make_plan, smallest_label_voxels
from seg.plan.settings import SETTINGS
from tests.plan.conftest import modelled

LOW_OK = replace(SETTINGS, lowres_min_label_voxels=0)  # the synthetic lesions are small: the label rule off


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """Six whole-scan-like cases, 96x72x44 (a modelled width-8 step at the full patch takes 4x what the floor
    allows in 20 minutes)."""
    from seg.data.synthetic import write_dataset

    return write_dataset(tmp_path_factory.mktemp("scans") / "ds", n=6, seed=5, shape=(96, 72, 44))


def _plan(root, tmp_path, settings=SETTINGS, budget="20m", **kw):
    m = modelled()
    return make_plan(
        root, budget=budget, instruments=m, cache=tmp_path / "fp.json", progress=False, settings=settings, **kw
    )


def test_patches_that_cannot_buy_the_floor_are_not_timed(scans, tmp_path, monkeypatch):
    plan = _plan(scans, tmp_path, budget="10m", resolution="full")  # width 4 at the full patch: 4x too slow
    full = planner.data_rules(_spec(scans), _cases(tmp_path)).full
    timed = {tuple(p.patch) for p in plan.probes}
    assert tuple(full) not in timed and "skipped unprobed" in plan.reasons["screen"]
    # the same choice as a search that times every patch from the full one down
    monkeypatch.setattr(planner.Planner, "_estimator", lambda self, measured: None)
    every = _plan(scans, tmp_path, budget="10m", resolution="full")
    assert tuple(full) in {tuple(p.patch) for p in every.probes} and "screen" not in every.reasons
    assert (plan.patch, plan.base, plan.precision) == (every.patch, every.base, every.precision)
    # what probing costs is its seconds, not its count: the screen times smaller patches (its rate among them)
    assert sum(p.step_s for p in plan.probes) < 0.7 * sum(p.step_s for p in every.probes)
    # precision is decided once, at the first patch searched: fp32 is timed at one patch only (the rate's and
    # the precision probe's), though the search went on to smaller ones
    assert len({tuple(p.patch) for p in plan.probes if p.precision == "fp32"}) == 1
    assert len({tuple(p.patch) for p in plan.probes}) >= 3


def test_a_smaller_patch_is_probed_unless_its_scaled_step_is_past_the_shrink_margin():
    """``shrink_margin`` (1.15) at its boundary: the next patch is probed when its step, scaled by voxels from the
    probed one, is within 1.15x the step allowed, and skipped (unprobed) just past it."""
    from seg.plan import rules
    from seg.plan.records import BareStep, Candidate
    from seg.plan.search import BareSteps, SearchInput, StepModel, next_patch

    assert SETTINGS.shrink_margin == 1.15
    patch = [64, 80, 80]
    nxt = rules.shrink_patch(patch)
    cand = Candidate(4, tuple(patch), 2, "bf16", True)
    steps = BareSteps(timer=lambda c, levels: pytest.fail("next_patch times nothing"))
    steps.records.append(BareStep(cand, 5, 1.0))  # the narrowest width at patch: 1 s a step
    inp = SearchInput(patch, 1200, True, True, 8.0, 4000, lambda m: 1000.0, model=StepModel(0.0))
    scaled = math.prod(nxt) / math.prod(patch)  # nxt's step, scaled by voxels
    assert next_patch(patch, steps, cand, scaled / 1.15 * 1.01, inp) == nxt
    assert math.prod(next_patch(patch, steps, cand, scaled / 1.15 * 0.99, inp)) < math.prod(nxt)


def _spec(root):
    from seg.data.datalist import load_dataset

    return load_dataset(root)


def _cases(tmp_path):
    import json

    return json.loads((tmp_path / "fp.json").read_text())["cases"]


def test_a_plan_that_cannot_train_whole_cases_takes_a_coarser_spacing(scans, tmp_path):
    full = _plan(scans, tmp_path, settings=LOW_OK, resolution="full")
    low = _plan(scans, tmp_path, settings=LOW_OK)
    assert full.resolution == "full" and not full.whole_volume
    assert low.resolution == "low" and low.whole_volume and low.base >= full.base
    factor = next(f for f in SETTINGS.lowres_factors if low.spacing[0] == pytest.approx(full.spacing[0] * f, rel=1e-3))
    assert low.spacing == pytest.approx([x * factor for x in full.spacing], rel=1e-3)
    assert low.reasons["resolution"].startswith("low resolution: at the data's spacing a width-4 step on whole cases")
    doc = yaml.safe_load(plan_yaml(low, "x"))
    assert doc["planned"]["resolution"] == "low" and doc["data"]["spacing"] == low.spacing
    spacing_line = next(x for x in plan_yaml(low, "x").splitlines() if x.startswith("  spacing:"))
    assert "low resolution: at the data" in spacing_line  # the reason, beside the value


def test_low_resolution_is_refused_where_the_smallest_label_would_shrink_too_far(scans, tmp_path):
    plan = _plan(scans, tmp_path)  # the default rule: 500 voxels at least
    assert plan.resolution == "full" and not plan.whole_volume
    assert "smallest label's median object would have" in plan.reasons["resolution"]
    assert SETTINGS.lowres_min_label_voxels == 500 and SETTINGS.lowres_factors == (1.25, 1.5, 2.0)
    # the boundary: the smallest label's median object at 1.25x, in voxels, against the setting
    small = smallest_label_voxels(_cases(tmp_path), [round(x * 1.25, 4) for x in plan.spacing])
    above = _plan(scans, tmp_path, settings=replace(SETTINGS, lowres_min_label_voxels=int(small) + 1))
    assert "at 1.25x the data's spacing" in above.reasons["resolution"]
    at = _plan(scans, tmp_path, settings=replace(SETTINGS, lowres_min_label_voxels=int(small)))
    assert "at 1.25x the data's spacing the smallest" not in at.reasons["resolution"]


def test_low_resolution_asked_where_no_spacing_trains_whole_cases_takes_the_coarsest_in_patches(scans, tmp_path):
    plan = _plan(scans, tmp_path, settings=LOW_OK, budget="2m", resolution="low")
    auto = _plan(scans, tmp_path, settings=LOW_OK, budget="2m")
    assert auto.resolution == "full"
    assert "no spacing up to 2x the data's trains whole cases" in auto.reasons["resolution"]
    assert plan.resolution == "low" and not plan.whole_volume
    assert plan.spacing == pytest.approx([x * SETTINGS.lowres_factors[-1] for x in auto.spacing], rel=1e-3)
    assert plan.reasons["resolution"].endswith(
        "(2x the data's spacing) patches (no spacing up to the coarsest trains whole cases) at width 4 (asked: "
        "--resolution low)"
    )


def test_a_full_resolution_plan_short_of_the_floor_takes_the_coarsest_spacing_in_patches(scans, tmp_path):
    """At 1 minute the plan at the data's spacing ends short of the floor (width 4, the smallest patch: on the
    whole-scan proxy at 4 minutes such a plan learned nothing): ``auto`` takes the coarsest factor, whose patch
    covers 8x the volume; at 2 minutes the full-resolution plan buys the floor and stays."""
    short = _plan(scans, tmp_path, settings=LOW_OK, budget="1m")
    full = _plan(scans, tmp_path, settings=LOW_OK, budget="1m", resolution="full")
    assert full.resolution == "full" and "short" in full.reasons
    assert short.resolution == "low" and not short.whole_volume
    assert short.spacing == pytest.approx([x * SETTINGS.lowres_factors[-1] for x in full.spacing], rel=1e-3)
    assert short.reasons["resolution"] == (
        f"low resolution: at the data's spacing the plan is short of the floor ({full.steps} of 4000 steps at width "
        f"4, {'x'.join(map(str, full.patch))}); at {'x'.join(f'{x:g}' for x in short.spacing)} mm (2x the data's "
        "spacing) a patch covers 8x the volume"
    )
    assert _plan(scans, tmp_path, settings=LOW_OK, budget="2m").resolution == "full"  # buys the floor
    labels = _plan(scans, tmp_path, budget="1m")  # the label rule still keeps small lesions at full resolution
    assert labels.resolution == "full" and "smallest label's median object" in labels.reasons["resolution"]


def test_whole_cases_at_the_datas_spacing_stay_at_full_resolution(synth_root, tmp_path):
    plan = _plan(synth_root, tmp_path, settings=LOW_OK)
    assert plan.resolution == "full" and plan.whole_volume and "resolution" not in plan.reasons
    low = _plan(synth_root, tmp_path, settings=LOW_OK, resolution="low")  # asked for
    assert low.resolution == "low" and "(asked: --resolution low)" in low.reasons["resolution"]


@pytest.mark.parametrize("net", ["unet", "agunet"])
def test_a_low_resolution_plan_trains_and_predicts_on_the_inputs_grid(scans, tmp_path, capsys, net):
    """The plan composes and trains a batch; seg-predict writes masks on each input's own grid (shape, affine),
    each the argmax of the probabilities resampled to that grid (not labels resampled). AGUNet, made for whole
    volumes, gets the paper's mode instead: each case resized to the network's input (data.mode: resize)."""
    from seg.cli.args import plan_overrides
    from seg.cli.predict import main as predict
    from seg.run.train import train
    from tests.conftest import compose_train

    low = _plan(scans, tmp_path, settings=LOW_OK, net=net)
    assert low.resolution == "low" and low.whole_volume
    path = tmp_path / "low.yaml"
    path.write_text(plan_yaml(low, "x"))
    data = yaml.safe_load(path.read_text())["data"]
    if net == "agunet":
        assert (data["mode"], data["resize_shape"]) == ("resize", low.patch) and "the paper's mode" in path.read_text()
    else:
        assert "mode" not in data and "resize_shape" not in data
    short = ["trainer.max_epochs=1", "+trainer.limit_train_batches=1", "+trainer.limit_val_batches=1"]
    short += ["~callbacks.rich_progress_bar", "data.num_workers=0", "trainer.precision=fp32", "ensemble.members=1"]
    r = train(compose_train(plan_overrides([f"plan={path}", *short]), tmp_path / "run"))
    assert r.metrics["global_step"] == 1
    src = sorted((scans / "imagesTr").glob("*.nii.gz"))[:2]
    inp = tmp_path / "in"
    inp.mkdir()
    for f in src:
        (inp / f.name).symlink_to(f)
    out = tmp_path / "out"
    assert (
        predict(["-i", str(inp), "-o", str(out), "-m", str(tmp_path / "run" / "model"), "-q", "--save-probabilities"])
        == 0
    )
    for f in src:
        ref, mask = nib.load(f), nib.load(out / f.name)
        prob = np.asanyarray(nib.load(out / f.name.replace(".nii.gz", "_prob.nii.gz")).dataobj)
        assert mask.shape == ref.shape and np.allclose(mask.affine, ref.affine)
        assert prob.shape == (*ref.shape, 2) and np.array_equal(np.asanyarray(mask.dataobj), prob.argmax(-1))


def test_the_screen_is_answered_once_a_plan(scans, tmp_path):
    """A calibration round's search starts where the first search did: with a training step as fast as the bare
    one (no data cost), the calibrated step model would admit larger patches and time them all again."""
    from seg.plan.records import TrainingCost
    from tests.plan.conftest import modelled_step

    def no_data_cost(root, ids, data, net, cand, levels, channels, device):
        return TrainingCost(modelled_step(net, cand, levels, *channels, device), 0.5, 0.02)

    m = modelled(training=no_data_cost)
    plan = make_plan(scans, budget="10m", instruments=m, cache=tmp_path / "fp.json", progress=False, resolution="full")
    searched = [tuple(p.patch) for p in plan.probes][1:]  # the machine-rate probe aside
    assert all(math.prod(p) <= math.prod(searched[0]) for p in searched), searched


@pytest.mark.parametrize(
    "net, tol", [("unet", 0.0), ("agunet", 0.0), ("daunet", 0.002)], ids=["unet", "agunet", "daunet"]
)
def test_flops_scaled_per_voxel_equal_the_counted_ones(net, tol):
    from seg.plan import estimate
    from seg.plan.records import Candidate

    # the deepest level (stride 16) 4-5, 3-10 and 2-4 voxels a side: the last is counted, not scaled
    for base, patch, batch in ((4, (64, 64, 80), 2), (8, (48, 64, 160), 1), (4, (32, 64, 64), 2)):
        scaled = estimate.step_flops(net, Candidate(base, patch, batch, "bf16"), 5, 1, 2)
        counted = estimate._count_flops(net, base, 5, 1, 2, batch, patch)
        assert scaled == pytest.approx(counted, rel=tol, abs=0), (net, patch)
    estimate._count_flops.cache_clear(), estimate._flops_per_voxel.cache_clear()
    estimate.step_flops(net, Candidate(8, (48, 64, 160), 1, "bf16"), 5, 1, 2)  # 3 voxels a side: scaled
    estimate.step_flops(net, Candidate(8, (48, 64, 160), 1, "bf16"), 5, 1, 2)
    estimate.step_flops(net, Candidate(8, (32, 64, 64), 1, "bf16"), 5, 1, 2)  # 2: counted, once
    estimate.step_flops(net, Candidate(8, (32, 64, 64), 1, "bf16"), 5, 1, 2)
    assert estimate._flops_per_voxel.cache_info().misses == 1  # the 3-voxel patch, scaled
    assert estimate._count_flops.cache_info().misses == 2  # the per-voxel figure's count and the 2-voxel patch


def test_a_cascade_is_a_low_resolution_plan_and_a_full_resolution_one_fed_its_probabilities(scans, tmp_path):
    from seg.config import UserError

    req = planner.PlanRequest(root=scans, budget_s=1200, cache=tmp_path / "fp.json", progress=False)
    low, full = planner.plan_cascade(replace(req, resolution="cascade"), "cv_low", modelled(), LOW_OK)
    assert (low.resolution, full.resolution) == ("low", "full") and low.whole_volume and not full.whole_volume
    assert "previous_stage" not in low.data and full.data["previous_stage"] == "cv_low"
    assert full.reasons["resolution"].startswith("a cascade's second stage: full resolution, fed the first stage's")
    # the pipeline's memory counts the first stage's channel: image, previous, label, against image, label
    plain = _plan(scans, tmp_path, settings=LOW_OK, resolution="full")
    gb = [float(re.search(r"take ([0-9.]+) GB", p.reasons["pipeline"]).group(1)) for p in (full, plain)]
    assert gb[0] == pytest.approx(gb[1] * 3 / 2, rel=0.02)
    text = plan_yaml(full, "x")
    assert yaml.safe_load(text)["data"]["previous_stage"] == "cv_low"
    assert "its seg-kfold run folder (seg-kfold plan=FIRST" in next(x for x in text.splitlines() if "previous_" in x)
    # no low-resolution configuration (the label rule refuses every coarser spacing): no cascade, one line
    with pytest.raises(UserError, match=r"no cascade: full resolution: at 1.25x .* plan --resolution full$"):
        planner.plan_cascade(replace(req, resolution="cascade"), "cv_low", modelled(), SETTINGS)


def test_seg_plan_resolution_cascade_writes_both_plans_and_says_how_to_run_them(scans, tmp_path, capsys, monkeypatch):
    from seg.cli.plan import main

    cascade = planner.plan_cascade
    monkeypatch.setattr(planner, "plan_cascade", lambda r, run: cascade(r, run, modelled(), LOW_OK))
    out = tmp_path / "p.yaml"
    assert main([str(scans), "--resolution", "cascade", "-o", str(out), "-q", "--device", "cpu"]) == 0
    first, second = yaml.safe_load(out.read_text()), yaml.safe_load((tmp_path / "p_fullres.yaml").read_text())
    run = "outputs/p_stage1"
    assert first["planned"]["resolution"] == "low" and second["data"]["previous_stage"] == run
    printed = capsys.readouterr().out
    assert f"next: seg-kfold plan={out} hydra.run.dir={run}\n" in printed
    assert f"then: seg-kfold plan={tmp_path / 'p_fullres.yaml'}  (data.previous_stage: {run})" in printed


@pytest.mark.parametrize("over, taken", [(1.14, 1), (1.16, 2)])
def test_at_or_below_the_rate_patch_in_fp32_the_screen_skips_past_the_shrink_margin(over, taken):
    """The cost model's estimate reads low for a patch no larger than the one the rate was timed at (a smaller
    patch does less per FLOP): without bf16 a patch estimated over ``shrink_margin`` (1.15x) the allowed step is
    skipped, not only one over ``skip_margin`` (2x). With bf16 (the rate is timed in fp32) 2x still holds."""
    from seg.plan.search import BareSteps, SearchInput, StepModel, _shrinks, screen

    assert (SETTINGS.shrink_margin, SETTINGS.skip_margin) == (1.15, 2.0)
    full = [64, 80, 80]
    patches = _shrinks(full, SETTINGS)
    unit = 0.25 / math.prod(full)  # the prior puts the full patch at the allowed step: the rate is timed there
    k = over / 0.8  # the machine: patches[1] (0.8x the full patch's voxels) at `over` times the allowed step

    def planned(bf16):
        steps = BareSteps(timer=lambda c, levels: k * unit * math.prod(c.patch))
        inp = SearchInput(full, 1200, bf16, True, 8.0, 4000, lambda m: 1000.0, model=StepModel(0.0))
        inp = replace(inp, estimate=lambda c, levels: unit * math.prod(c.patch))
        assert inp.floor_step_s == 0.25
        return screen(steps, inp), steps

    (patch, why), steps = planned(bf16=False)
    assert steps.rate_patch == tuple(full) and patch == patches[taken]
    assert why.endswith(f"(over 1.15x at or below {'x'.join(map(str, full))}, where the rate was timed)")
    assert planned(bf16=True)[0] == (full, None)  # the full patch at 1.43-1.45x: within 2x
