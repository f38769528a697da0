"""The device pipeline (MONAI's fast-training recipe: cached volumes on the training device, augmentation on
its tensors, a ThreadDataLoader) against the worker pipeline: the same batches in every respect a training
step sees, the same sampling and augmentation statistics, and training through it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seg.data.datamodule import SegDataModule


def _dm(root, tmp_path, pipeline, **kw):
    args = dict(patch_size=[16, 16, 16], num_samples=2, batch_size=2, num_workers=0, num_folds=4, pos_neg=[1, 1]) | kw
    return SegDataModule(str(root), pipeline=pipeline, splits_file=str(tmp_path / f"s_{pipeline}.json"), **args)


def _batches(dm, n):
    out = []
    while len(out) < n:
        out += list(dm.train_dataloader())
    return out[:n]


@pytest.fixture(scope="module")
def both(synth_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipes")
    torch.manual_seed(0)
    dms = {p: _dm(synth_root, tmp, p) for p in ("workers", "device")}
    for dm in dms.values():
        dm.setup("fit")
    return {p: _batches(dm, 60) for p, dm in dms.items()}, dms


def test_same_keys_shapes_and_dtypes(both):
    batches, dms = both
    w, d = batches["workers"][0], batches["device"][0]
    assert sorted(w) == sorted(d) == ["case_id", "image", "label"]  # the sampler's indices are dropped
    for k in ("image", "label"):
        assert w[k].shape == d[k].shape == (4, 1, 16, 16, 16) and w[k].dtype == d[k].dtype
        assert type(w[k]) is type(d[k])
    vw, vd = next(iter(dms["workers"].val_dataloader())), next(iter(dms["device"].val_dataloader()))
    assert sorted(vw) == sorted(vd) and vw["image"].shape == vd["image"].shape
    assert torch.equal(vw["image"].as_tensor(), vd["image"].as_tensor())  # validation: no randomness


def test_same_positive_negative_sampling(both):
    """pos_neg [1, 1]: half the patches are centred on foreground, in both (counted on the patch centres)."""
    batches, _ = both
    for p in ("workers", "device"):
        centres = [float(b["label"][i, 0, 8, 8, 8]) > 0 for b in batches[p] for i in range(b["label"].shape[0])]
        assert 0.35 < np.mean(centres) < 0.65, (p, np.mean(centres))


def test_augmentation_statistics_agree_within_tolerance(both):
    """Mean and spread of the augmented image patches and the foreground share: within 0.15 (intensities are
    z-scored, so 0.15 is 15 % of one standard deviation) and 25 % relative (the foreground share)."""
    batches, _ = both
    stats = {}
    for p, bs in batches.items():
        x = torch.cat([b["image"].as_tensor().flatten() for b in bs])
        y = torch.cat([b["label"].as_tensor().flatten() for b in bs])
        stats[p] = (float(x.mean()), float(x.std()), float((y > 0).float().mean()))
    (mw, sw, fw), (md, sd, fd) = stats["workers"], stats["device"]
    assert abs(mw - md) < 0.15 and abs(sw - sd) < 0.15, stats
    assert abs(fw - fd) < 0.25 * max(fw, fd), stats


def test_the_device_pipeline_puts_its_volumes_on_the_training_device(both):
    _, dms = both
    item = dms["device"].train_ds._cache[0]
    assert item["image"].device == torch.device("cpu") == dms["device"].device  # no trainer: the CPU
    assert "label_fg_indices" in item and "label_bg_indices" in item  # cached once per case


def test_training_a_few_steps_through_the_device_pipeline(synth_root, tmp_path):
    from seg.run.train import train
    from tests.conftest import TINY, compose_train

    cfg = compose_train(
        [f"data.root={synth_root}", *TINY, "data.pipeline=device", "trainer.max_epochs=2"], tmp_path / "r"
    )
    r = train(cfg)
    assert r.metrics["global_step"] == 6 and r.model_bundle is not None  # 6 training cases / batch 2, 2 epochs


def test_an_unknown_pipeline_is_one_line(synth_root, tmp_path):
    from seg.errors import UserError

    with pytest.raises(UserError, match="data.pipeline='gpu' is not one of"):
        _dm(synth_root, tmp_path, "gpu")
