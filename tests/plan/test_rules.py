"""Planning rules on hand-made fingerprints: spacing, pooling and patch, normalisation, mirroring, budgets."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from seg.config import UserError, as_max_time
from seg.plan import rules
from seg.plan.planner import parse_budget
from seg.plan.settings import SETTINGS


def test_target_spacing_is_the_median_per_axis():
    assert rules.target_spacing([[1, 1, 1], [1, 1, 2], [0.5, 1, 1.5]]) == [1.0, 1.0, 1.5]


def test_anisotropic_coarse_axis_takes_its_10th_percentile():
    sp = [[0.8, 0.8, z] for z in (5.0, 5.0, 5.0, 5.0, 2.5, 5.0, 6.0, 5.0, 5.0, 1.5)]
    t = rules.target_spacing(sp)
    assert t[:2] == [0.8, 0.8]
    assert t[2] == pytest.approx(np.percentile([s[2] for s in sp], 10))  # not the median 5.0


def test_hippocampus_median_case_gives_nnunets_patch():
    # MSD hippocampus: median 35x50x36 at 1 mm; nnU-Net v2 plans 40x56x40
    assert rules.pools_per_axis([35, 50, 36]) == [3, 3, 3]
    assert rules.round_patch([35, 50, 36]) == [40, 56, 40]
    assert rules.round_patch([64, 64, 64]) == [64, 64, 64]
    assert rules.pools_per_axis([200, 7, 64]) == [5, 0, 4]


def test_shrink_patch_reduces_the_largest_axis_and_stays_poolable():
    p = rules.shrink_patch([64, 64, 128])
    assert p[2] < 128 and p[:2] == [64, 64]
    assert all(s % 2**k == 0 for s, k in zip(p, rules.pools_per_axis(p)))


def _chan(sample, zero=0.0):
    return [{"sample": list(sample), "zero_fraction": zero, "mean": float(np.mean(sample))}]


def test_ct_is_clipped_to_foreground_percentiles_and_z_scored():
    rng = np.random.default_rng(0)
    cases = [_chan(rng.normal(40, 20, 1000).tolist() + [3000.0, -1000.0]) for _ in range(5)]
    n = rules.normalization(["CT"], cases)
    pooled = np.concatenate([c[0]["sample"] for c in cases])
    lo, hi = np.percentile(pooled, [0.5, 99.5])
    assert n["mode"] == "ct" and n["clip"] == [round(lo, 2), round(hi, 2)]
    assert n["mean"] == pytest.approx(np.clip(pooled, lo, hi).mean(), abs=1e-3)
    assert n["std"] == pytest.approx(np.clip(pooled, lo, hi).std(), abs=1e-3)


def test_mr_is_z_scored_over_nonzero_voxels_only_when_the_background_is_masked():
    assert rules.normalization(["T1"], [_chan([1, 2, 3], zero=0.0)] * 3) == {"mode": "zscore", "nonzero": False}
    assert rules.normalization(["FLAIR"], [_chan([1, 2, 3], zero=0.6)] * 3) == {"mode": "zscore", "nonzero": True}


def _case(c1, c2=None):
    labels = {"1": {"centroid_ras": c1}}
    if c2 is not None:
        labels["2"] = {"centroid_ras": c2}
    return {"labels": labels}


def test_mirroring_keeps_axes_along_which_two_labels_keep_their_order():
    rng = np.random.default_rng(0)
    # label 1 always anterior (axis 1) of label 2; along axes 0 and 2 their order is random
    cases = []
    for _ in range(20):
        a = rng.normal(size=3)
        b = a + np.array([rng.normal(), -5.0, rng.normal()])
        cases.append(_case(a.tolist(), b.tolist()))
    axes, why = rules.mirror_axes(cases)
    assert axes == [0, 2] and "axis 1" in why
    # one label anywhere: every axis may be mirrored
    assert rules.mirror_axes([_case(rng.normal(size=3).tolist()) for _ in range(20)])[0] == [0, 1, 2]


@pytest.mark.parametrize(
    "text, seconds", [("20m", 1200), ("1h", 3600), ("1h30m", 5400), ("90s", 90), ("45", 2700), ("00:01:00:00", 3600)]
)
def test_budget_parsing(text, seconds):
    assert parse_budget(text) == seconds
    assert parse_budget(as_max_time(seconds)) == seconds


@pytest.mark.parametrize("bad", ["twenty", "20x", "0m", ""])
def test_bad_budget_is_one_line(bad):
    with pytest.raises(UserError, match="--budget"):
        parse_budget(bad)


def test_anisotropy_threshold_is_3x_with_a_case_on_each_side():
    """nnU-Net's rule: an axis coarser than 3x the finest is low-resolution (its 10th percentile is taken).
    At 2.9x the median stays; at 3.1x the 10th percentile (1.0 here) replaces it."""
    assert rules.ANISOTROPY == 3.0
    below = [[1.0, 1.0, 2.9]] * 8 + [[1.0, 1.0, 1.0]] * 2  # median 2.9, 10th percentile 1.0
    above = [[1.0, 1.0, 3.1]] * 8 + [[1.0, 1.0, 1.0]] * 2
    assert rules.target_spacing(below)[2] == pytest.approx(2.9)
    assert rules.target_spacing(above)[2] == pytest.approx(1.0)  # not finer than the other axes' coarsest
    at = [[1.0, 1.0, 3.0]] * 8 + [[1.0, 1.0, 1.0]] * 2  # "coarser than 3x": exactly 3x is not
    assert rules.target_spacing(at)[2] == pytest.approx(3.0)


def test_bf16_is_chosen_only_when_at_least_15_percent_faster(monkeypatch, synth_root, tmp_path):
    """BF16_GAIN 0.85: bf16 at 0.84x fp32's step is chosen, at 0.86x it is not."""
    from seg.plan.planner import make_plan
    from seg.plan.settings import SETTINGS
    from tests.plan.conftest import modelled, modelled_step

    assert SETTINGS.bf16_gain == 0.85
    for ratio, expected in ((0.84, "bf16"), (0.86, "fp32")):

        def step(net, cand, *args, r=ratio):
            t = modelled_step(net, replace(cand, precision="fp32"), *args)
            return t * (r if cand.precision == "bf16" else 1.0)

        m = modelled(step)
        plan = make_plan(
            synth_root, budget="20m", device="cpu", instruments=m, cache=tmp_path / "fp.json", progress=False
        )
        assert plan.precision == expected, ratio


def test_channels_last_only_when_at_least_5_percent_faster(monkeypatch, synth_root, tmp_path):
    from seg.plan.planner import make_plan
    from seg.plan.settings import SETTINGS
    from tests.plan.conftest import modelled, modelled_step

    assert SETTINGS.channels_last_gain == 0.95
    for ratio, expected in ((0.94, True), (0.96, False)):

        def step(net, cand, *args, r=ratio):
            t = modelled_step(net, replace(cand, channels_last=True), *args)
            return t * (r if cand.channels_last else 1.0)

        m = modelled(step)
        plan = make_plan(
            synth_root, budget="20m", device="cpu", instruments=m, cache=tmp_path / "fp.json", progress=False
        )
        assert plan.channels_last is expected, ratio


def test_memory_gb_caps_the_width(monkeypatch, synth_root, tmp_path):
    """--memory-gb: a width whose activations exceed it is never chosen, whatever time it buys."""
    from seg.plan.estimate import activation_gb
    from seg.plan.planner import make_plan
    from tests.plan.conftest import modelled

    m = modelled(lambda *a: 1e-4)  # every step instant: only memory limits the width
    fp = tmp_path / "fp.json"
    wide = make_plan(synth_root, budget="20m", device="cpu", instruments=m, cache=fp, progress=False, memory_gb=100)
    need8 = activation_gb(8, wide.levels, wide.patch, 2, wide.precision)
    need16 = activation_gb(16, wide.levels, wide.patch, 2, wide.precision)
    capped = make_plan(
        synth_root,
        budget="20m",
        device="cpu",
        instruments=m,
        cache=tmp_path / "fp.json",
        progress=False,
        memory_gb=(need8 + need16) / 2,
        settings=replace(SETTINGS, min_memory_gb=0.0),  # the 32^3 cases' nets need MBs: the floor off
    )
    assert wide.base == 32 and capped.base == 8


def test_memory_gb_below_the_floor_is_refused_with_a_case_on_each_side(synth_root, tmp_path):
    """D13: --memory-gb 0.001 planned 8,999,781 steps at 0.000 s. The floor (``min_memory_gb``, 0.5 GB) refuses
    below it, before any probe; at it the plan is made."""
    from seg.config import UserError
    from seg.plan.planner import make_plan
    from tests.plan.conftest import modelled

    assert SETTINGS.min_memory_gb == 0.5
    kw = {"budget": "20m", "device": "cpu", "instruments": modelled(), "cache": tmp_path / "fp.json", "progress": False}
    with pytest.raises(UserError, match=r"--memory-gb 0.49: .*at least 0.5"):
        make_plan(synth_root, memory_gb=0.49, **kw)
    assert make_plan(synth_root, memory_gb=0.5, **kw).steps > 0


def test_member_count_rounds_width8_steps_over_6000_with_a_case_on_each_side():
    """round(S8 / 6000), clipped to 1..5: 9500 steps (1.58) make 2 members where a floor would make 1;
    8500 (1.42) make 1; 40000 (6.7) make the maximum, 5."""
    from seg.plan.search import member_count
    from seg.plan.settings import SETTINGS

    assert SETTINGS.member_steps_w8 == 6000 and SETTINGS.max_members == 5
    assert member_count(0.1, 950.0, 1200)[0] == 2
    assert member_count(0.1, 850.0, 1200)[0] == 1
    assert member_count(0.1, 4000.0, 1200)[0] == 5
    members, why = member_count(0.1, 950.0, 1200)
    assert "9500 steps of a width-8 net" in why and "2 members of 10 min" in why
