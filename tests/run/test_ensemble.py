"""``ensemble.members``: several networks trained on one fold's training cases, scored and bundled as their
mean softmax; a rerun reuses finished members and resumes an interrupted one; the bundle predicts and exports
with every member."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
import yaml

from seg.inference.bundle import load_bundle, read_checkpoint
from seg.run.train import train
from tests.conftest import TINY, compose_train


def _cfg(root, out, members=2):
    return compose_train(
        [f"data.root={root}", *TINY, "trainer.max_epochs=2", f"ensemble.members={members}", "seed=3"], out
    )


@pytest.fixture(scope="module")
def ensemble_run(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("ens")
    return train(_cfg(synth_root, out)), out


def _dice_by_hand(modules, loader) -> float:
    """Mean over foreground labels of the mean over cases (reference has the label) of 2|P&R| / (|P| + |R|),
    P the argmax of the members' mean softmax: numpy, not seg's metric code."""
    per_label: dict[int, list[float]] = {}
    with torch.no_grad():
        for batch in loader:
            x = batch["image"]
            y = np.asarray(batch["label"])[:, 0]
            probs = sum(torch.softmax(m.predict_logits(x).float(), 1) for m in modules) / len(modules)
            pred = probs.argmax(1).numpy()
            for b in range(pred.shape[0]):
                for lab in range(1, probs.shape[1]):
                    r, p = y[b] == lab, pred[b] == lab
                    if r.any():
                        per_label.setdefault(lab, []).append(2 * (r & p).sum() / (r.sum() + p.sum()))
    return float(np.mean([np.mean(v) for v in per_label.values()]))


class _Fixed:
    """A stand-in module whose whole-volume logits are given: background 0, foreground logit(p)."""

    label_names = ["fg"]

    def __init__(self, p_fg):
        self.logits = torch.stack([torch.zeros_like(p_fg), torch.logit(p_fg)])[None]

    def eval(self):
        return self

    def to(self, device):
        return self

    def predict_logits(self, x):
        return self.logits


def test_ensemble_validation_scores_the_mean_softmax_not_a_member():
    from seg.lit.module import ensemble_validation

    y = torch.zeros(1, 1, 4, 4, 4)
    y[..., :2] = 1  # the reference: half the volume
    ref = y[0, 0].bool()
    a = _Fixed(torch.full((4, 4, 4), 0.6))  # foreground everywhere: Dice 2*32/(64+32)
    b = _Fixed(torch.where(ref, 0.45, 0.3))  # background everywhere: Dice 0
    loader = [{"image": torch.zeros(1, 1, 4, 4, 4), "label": y}]
    assert ensemble_validation([a], loader)["val/dice"] == pytest.approx(2 / 3)
    assert ensemble_validation([b], loader)["val/dice"] == 0.0
    # mean foreground probability 0.525 inside the reference, 0.45 outside: exactly the reference
    both = ensemble_validation([a, b], loader)
    assert both["val/dice"] == pytest.approx(1.0) and both["val/dice_fg"] == pytest.approx(1.0)
    # limit (a fast_dev_run's 1): the first batch only; an all-background second batch would lower the Dice
    bad = {"image": torch.zeros(1, 1, 4, 4, 4), "label": 1 - y}
    assert ensemble_validation([a, b], [*loader, bad], limit=1)["val/dice"] == pytest.approx(1.0)
    assert ensemble_validation([a, b], [*loader, bad])["val/dice"] < 0.9


def test_members_train_with_their_own_seeds_and_folders(ensemble_run):
    r, out = ensemble_run
    assert len(r.members) == 2
    seeds = [yaml.safe_load((out / f"member_{m}" / "config.yaml").read_text())["seed"] for m in (0, 1)]
    assert seeds == [3, 4]
    for m in (0, 1):
        assert (out / f"member_{m}" / "checkpoints" / "last.ckpt").is_file()
        assert (out / f"member_{m}" / "progress.png").is_file()
    w0, w1 = (read_checkpoint(out / f"member_{m}" / "checkpoints" / "last.ckpt")[0] for m in (0, 1))
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)  # two networks, not one trained twice
    assert (out / "progress.png").stat().st_size > 5000  # the run's own: both members' curves
    assert r.metrics["global_step"] == sum(x.metrics["global_step"] for x in r.members)
    assert [x["seed"] for x in r.metrics["ensemble"]["member_metrics"]] == [3, 4]
    assert json.loads((out / "metrics.json").read_text())["val/dice"] == r.metrics["val/dice"]


def test_ensemble_dice_is_the_mean_softmax_scored_by_hand(ensemble_run):
    r, _ = ensemble_run
    modules = [x.module.eval() for x in r.members]
    loader = r.datamodule.val_dataloader()
    assert r.metrics["val/dice"] == pytest.approx(_dice_by_hand(modules, loader), abs=1e-6)
    # and it is not simply one member's figure
    singles = [_dice_by_hand([m], loader) for m in modules]
    assert r.metrics["ensemble"]["member_metrics"][0]["val/dice"] == pytest.approx(singles[0], abs=1e-6)


def test_bundle_holds_every_member_and_predicts_their_mean(ensemble_run, synth_root, tmp_path):
    from seg.inference.export import export_bundle

    r, out = ensemble_run
    bundle = load_bundle(out / "model")
    assert bundle.members == 2 and bundle.meta.extra["member_seeds"] == [3, 4]
    nets = bundle.load_nets()
    assert len(nets) == 2
    for net, member in zip(nets, r.members):
        src = torch.load(member.model_bundle / "fold_0" / "weights.pt", weights_only=True)
        assert all(torch.equal(net.state_dict()[k], src[k]) for k in src)
    img = str(sorted((synth_root / "imagesTr").glob("*.nii.gz"))[0])
    both = bundle.predictor().predict(img)
    ones = [load_bundle(m.model_bundle).predictor().predict(img) for m in r.members]
    mean = (ones[0].probabilities + ones[1].probabilities) / 2
    np.testing.assert_allclose(both.probabilities.numpy(), mean.numpy(), atol=1e-5)
    # exported: one ONNX file per member, and the runtime gives the same ensemble
    copy = tmp_path / "exported"
    export_bundle(bundle, "onnx", out=copy)
    assert (copy / "fold_0" / "model.onnx").is_file() and (copy / "fold_0" / "member_1" / "model.onnx").is_file()
    ort = load_bundle(copy).predictor(engine="onnxruntime").predict(img)
    np.testing.assert_allclose(ort.probabilities.numpy(), both.probabilities.numpy(), atol=1e-4)


def test_rerun_reuses_finished_members_and_resumes_an_unfinished_one(synth_root, tmp_path, caplog):
    out = tmp_path / "ens"
    first = train(_cfg(synth_root, out))
    m0 = (out / "member_0" / "metrics.json").stat().st_mtime_ns
    (out / "member_1" / "metrics.json").unlink()  # member 1 as if killed after its last epoch's checkpoint
    with caplog.at_level(logging.INFO, logger="seg.train"):
        again = train(_cfg(synth_root, out))
    text = caplog.text
    assert "member 1/2 already trained" in text and "member 2/2: resuming from" in text
    assert (out / "member_0" / "metrics.json").stat().st_mtime_ns == m0  # not retrained
    assert again.members[1].metrics["epochs"] == first.members[1].metrics["epochs"]  # no epoch beyond max_epochs
    assert again.metrics["val/dice"] == pytest.approx(first.metrics["val/dice"], abs=1e-6)


def test_members_below_one_is_one_line(synth_root, tmp_path):
    from seg.config import UserError

    with pytest.raises(UserError, match=r"ensemble.members=0"):
        train(_cfg(synth_root, tmp_path / "x", members=0))


def test_kfold_with_members_bundles_every_member_of_every_fold(synth_root, tmp_path):
    from seg.run.kfold import kfold
    from tests.conftest import tiny_cv

    run = tmp_path / "cv"
    kfold(compose_train([*tiny_cv(synth_root, run), "ensemble.members=2"], run, config_name="kfold"))
    bundle = load_bundle(run / "model")
    assert bundle.folds == [0, 1] and bundle.members == 2
    assert len(bundle.load_nets()) == 4
    for k in (0, 1):
        assert (run / "model" / f"fold_{k}" / "member_1" / "weights.pt").is_file()
        assert (run / f"fold_{k}" / "member_1" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.parametrize(
    "trainer, limit",
    [({}, 0), ({"fast_dev_run": True}, 1), ({"limit_val_batches": 3}, 3), ({"limit_val_batches": 1.0}, 0)],
)
def test_the_members_mean_is_scored_on_the_cases_lightning_validates(monkeypatch, trainer, limit):
    """A plan's trainer.limit_val_batches (a count of cases, #45) and a debug run's one case hold for the ensemble's
    scoring too: its figure reads beside the members' validations."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    import seg.run.train as tr

    seen = []
    monkeypatch.setattr(tr, "ensemble_validation", lambda mods, loader, bf16, device, lim: seen.append(lim) or {})
    dm = SimpleNamespace(val_dataloader=lambda: [], val_cases=["a", "b", "c", "d"])
    member = SimpleNamespace(module=torch.nn.Linear(1, 1), checkpoint=None, datamodule=dm)
    cfg = OmegaConf.create({"trainer": {"precision": "fp32", "accelerator": "cpu", **trainer}})
    tr._score_members(cfg, [member, member])
    assert seen == [limit, limit]
