"""One inferer spec: what validation slides is what the bundle stores and what seg-predict and the k-fold
out-of-fold prediction run (composed from the real train.yaml and kfold.yaml)."""

from __future__ import annotations

from seg.inference.bundle import load_bundle, read_checkpoint
from seg.nn.inferer import InfererSpec
from seg.run.kfold import kfold
from seg.run.train import train
from tests.conftest import TINY, compose_train

EXPLICIT = ["model.inferer.overlap=0.3", "model.inferer.sw_batch_size=3"]


def test_train_validation_inferer_is_the_predictors(synth_root, tmp_path):
    cfg = compose_train(["trainer.max_epochs=1", f"data.root={synth_root}", *TINY, *EXPLICIT], tmp_path)
    r = train(cfg)
    validated = r.module.inferer
    # patch mode: the unset roi_size resolves to the training patch; the explicit keys are kept
    assert validated == InfererSpec(roi_size=(24, 24, 24), overlap=0.3, sw_batch_size=3)
    predictor = load_bundle(r.model_bundle).predictor()
    assert predictor.inferer == validated
    # and --overlap on the command line overrides only the overlap
    assert load_bundle(r.model_bundle).predictor(overlap=0.6).inferer == InfererSpec((24, 24, 24), 0.6, 3)


def test_kfold_out_of_fold_and_cv_bundle_use_the_validation_inferer(synth_root, tmp_path, monkeypatch):
    import seg.inference.batch as batch

    seen = []
    real = batch.predict_one

    def spy(case, predictor, *a, **kw):
        seen.append(predictor.inferer)
        return real(case, predictor, *a, **kw)

    monkeypatch.setattr(batch, "predict_one", spy)
    run = tmp_path / "cv"
    over = [f"data.root={synth_root}", *[o for o in TINY if not o.startswith("data.num_folds")], "cv.folds=2"]
    cfg = compose_train(
        [*over, "trainer.max_epochs=1", f"cv.run_dir={run}", "cv.worst_cases=0", "cv.surface_metrics=false", *EXPLICIT],
        run,
        config_name="kfold",
    )
    kfold(cfg)
    _, hp = read_checkpoint(run / "fold_0" / "checkpoints" / "last.ckpt")
    validated = InfererSpec.from_mapping(hp["inferer"])
    assert validated == InfererSpec((24, 24, 24), 0.3, 3)
    assert seen and all(s == validated for s in seen)  # every out-of-fold case
    assert load_bundle(run / "model").inferer == validated  # the CV's deployable bundle
