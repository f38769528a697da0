"""The training probe on real (tiny) data: a real step through the planned datamodule costs at least the bare
network's step, validation and caching are timed, on both data pipelines."""

from __future__ import annotations

import pytest

from seg.plan import timing
from seg.plan.records import Candidate
from seg.plan.settings import SETTINGS


@pytest.mark.parametrize("pipeline", ["device", "workers"])
def test_training_probe_times_a_real_step_validation_and_caching(synth_root, pipeline):
    from seg.data.datalist import load_dataset

    ids = [c.case_id for c in load_dataset(synth_root).cases]
    cand = Candidate(4, (16, 16, 16), 2, "fp32", True)
    data = {"patch_size": [16, 16, 16], "batch_size": 1, "num_samples": 2, "pipeline": pipeline, "num_workers": 0}
    tc = timing.time_training_step(str(synth_root), ids, data, "unet", cand, 3, (1, 2), "cpu")
    bare = timing.time_bare_step("unet", cand, 3, 1, 2, "cpu")
    assert tc.step_s > 0.5 * bare  # the same network's step (with its data): never far below the bare one
    assert 0 < tc.val_case_s < 30 and 0 < tc.cache_case_s < 10


def test_the_probe_step_is_a_trimmed_mean_of_72_steps_after_4():
    """Pinned (docs/planning.md): a median of 24 steps read one of the two speeds the development VM switches
    between every 10-40 s; 72 steps' mean, the fastest and slowest tenth left out, reads their mixture."""
    s = SETTINGS
    assert (s.training_warmup, s.training_steps, s.training_trim) == (4, 72, 0.1)
    assert (s.training_cases, s.training_val_cases, s.bare_too_slow_s) == (16, 2, 30.0)
    # two speeds, 60/40, and one epoch-start step ten times slower: the mixture, not either speed or the outlier
    steps = [0.22] * 43 + [0.285] * 28 + [2.5]
    assert timing.trimmed_mean(steps, s.training_trim) == pytest.approx((0.22 * 36 + 0.285 * 22) / 58)
    assert timing.trimmed_mean([1.0, 2.0, 3.0], 0.1) == 2.0  # too few to leave any out


@pytest.mark.parametrize("net", ["agunet", "daunet"])
def test_the_papers_nets_take_a_bare_step_on_a_cpu(net):
    """Their deep supervision resizes the labels: the bare probe's labels are float, as the loader's are (int64
    labels stopped `seg-plan --net agunet` on a CPU with a traceback)."""
    t = timing.time_bare_step(net, Candidate(4, (16, 16, 16), 1, "fp32", True), 3, 1, 2, "cpu", reps=1)
    assert 0 < t < SETTINGS.bare_too_slow_s
