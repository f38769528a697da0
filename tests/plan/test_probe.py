"""The training probe on real (tiny) data: a real step through the planned datamodule costs at least the bare
network's step, validation and caching are timed, on both data pipelines."""

from __future__ import annotations

import pytest

from seg.plan import cost
from seg.plan.probe import training_probe


@pytest.mark.parametrize("pipeline", ["device", "workers"])
def test_training_probe_times_a_real_step_validation_and_caching(synth_root, pipeline):
    from seg.data.datalist import load_dataset

    ids = [c.case_id for c in load_dataset(synth_root).cases]
    cand = cost.Candidate(4, (16, 16, 16), 2, "fp32", True)
    data = {"patch_size": [16, 16, 16], "batch_size": 1, "num_samples": 2, "pipeline": pipeline, "num_workers": 0}
    tc = training_probe(str(synth_root), ids, data, "unet", cand, 3, (1, 2), "cpu")
    bare = cost.measure_step("unet", cand, 3, 1, 2, "cpu")
    assert tc.step_s > 0.5 * bare  # the same network's step (with its data): never far below the bare one
    assert 0 < tc.val_case_s < 30 and 0 < tc.cache_case_s < 10
