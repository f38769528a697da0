"""A two-stage cascade end to end: a low-resolution k-fold run, a full-resolution k-fold run fed its out-of-fold
probabilities (data.previous_stage), the chained bundle predicting by itself on the input's grid."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from seg.inference.bundle import BundleError, load_bundle
from seg.run.kfold import kfold
from tests.conftest import compose_train, tiny_cv


@pytest.fixture(scope="module")
def stages(synth_root, tmp_path_factory):
    base = tmp_path_factory.mktemp("cascade")
    mp = pytest.MonkeyPatch()
    mp.setenv("SEG_CACHE_DIR", str(base / "cache"))
    low = base / "low"  # the first stage: the data's 6.25-mm spacing x 2, whole 16^3 cases
    lowres = ["data.spacing=[12.5,12.5,12.5]", "data.patch_size=[16,16,16]"]
    kfold(compose_train(tiny_cv(synth_root, low) + lowres, low, "kfold"))
    full = base / "full"
    kfold(compose_train(tiny_cv(synth_root, full) + [f"data.previous_stage={low}"], full, "kfold"))
    yield low, full
    mp.undo()


def test_the_second_stage_trains_on_the_first_stages_out_of_fold_probabilities(synth_root, stages):
    low, full = stages
    bundle = load_bundle(full / "model")
    assert bundle.meta.previous_stage == "previous" and bundle.meta.net["in_channels"] == 2
    assert bundle.meta.in_channels == 1 and bundle.meta.net_in_channels == 2  # a case still gives one image
    # the chained first stage is the first stage's k-fold bundle, every fold of it
    for f in ["model.yaml", "fold_0/weights.pt", "fold_1/weights.pt"]:
        assert (full / "model" / "previous" / f).read_bytes() == (low / "model" / f).read_bytes()
    # out-of-fold: the second stage's fold 0 predicted its validation cases from the first stage's out-of-fold
    # file (whose fold never trained on the case), not from the chained first stage (whose other fold did)
    splits = json.loads((full / "splits.json").read_text())
    assert splits == json.loads((low / "splits.json").read_text())  # the same folds: paired comparisons
    cid = splits[0]["val"][0]
    image = str(synth_root / "imagesTr" / f"{cid}.nii.gz")
    saved = np.load(full / "fold_0" / "validation" / f"{cid}_prob.npz")["prob"]
    fold0 = load_bundle(full / "fold_0" / "model")
    oof = fold0.predictor().predict([image, _first_stage_file(low, synth_root, cid)])
    chained = fold0.predictor().predict(image)
    assert np.array_equal(oof.probabilities[1].numpy().astype(np.float16), saved)  # as the file holds it
    assert not np.array_equal(chained.probabilities[1].numpy().astype(np.float16), saved)  # so the check can fail


def _first_stage_file(low, root, cid):
    """The first stage's out-of-fold probabilities of ``cid`` as the cascade's data made them."""
    from seg.data.cascade import attach_previous_stage
    from seg.data.datalist import load_dataset

    return attach_previous_stage(load_dataset(root), low).by_id()[cid].previous


def test_the_chained_bundle_predicts_alone_on_the_inputs_grid(synth_root, stages, tmp_path):
    from seg.cli.predict import main

    low, full = stages
    inp = tmp_path / "in"
    inp.mkdir()
    src = nib.load(str(sorted((synth_root / "imagesTr").iterdir())[0]))
    aff = np.diag([0.9, 1.3, 1.1, 1.0])  # another grid than training's: both stages resample to and from it
    nib.save(nib.Nifti1Image(np.asanyarray(src.dataobj)[:30, :28, :31], aff), str(inp / "case.nii.gz"))
    shutil.copytree(full / "model", tmp_path / "moved")  # the folder alone (previous_stage is its sub-folder)
    assert main(["-m", str(tmp_path / "moved"), "-i", str(inp), "-o", str(tmp_path / "out")]) == 0
    mask = nib.load(str(tmp_path / "out" / "case.nii.gz"))
    assert mask.shape == (30, 28, 31) and np.allclose(mask.affine, aff)
    # the chain is the first stage's probabilities (resampled to the input's grid) fed to the second stage
    second = load_bundle(tmp_path / "moved").predictor()
    first = load_bundle(tmp_path / "moved" / "previous").predictor(postprocess=False).predict(str(inp / "case.nii.gz"))
    fg = nib.Nifti1Image(first.probabilities[1].numpy(), aff)
    nib.save(fg, str(tmp_path / "fg.nii"))
    by_hand = second.predict([str(inp / "case.nii.gz"), str(tmp_path / "fg.nii")])
    chained = second.predict(str(inp / "case.nii.gz"))
    assert torch.equal(chained.probabilities, by_hand.probabilities)
    assert np.array_equal(np.asarray(mask.dataobj), chained.labels)
    # the previous channel counts: zeros in its place predict otherwise
    nib.save(nib.Nifti1Image(np.zeros(fg.shape, np.float32), aff), str(tmp_path / "zero.nii"))
    zero = second.predict([str(inp / "case.nii.gz"), str(tmp_path / "zero.nii")])
    assert not torch.equal(zero.probabilities, chained.probabilities)


def test_a_model_yaml_cannot_chain_a_folder_outside_its_bundle(stages, tmp_path):
    _, full = stages
    shutil.copytree(full / "model", tmp_path / "b")
    text = (tmp_path / "b" / "model.yaml").read_text().replace("previous_stage: previous", "previous_stage: ../../x")
    (tmp_path / "b" / "model.yaml").write_text(text)
    with pytest.raises(BundleError, match=r"model.yaml: previous_stage '../../x' is not 'previous'"):
        load_bundle(tmp_path / "b")


def test_an_ensembles_bundle_of_second_stages_keeps_their_first_stage(stages, tmp_path):
    from seg.inference.bundle import bundle_members

    _, full = stages
    member = full / "fold_0" / "model"
    out = bundle_members(tmp_path / "ens", 0, [member, member], [0, 1])
    assert (out / "previous" / "model.yaml").read_bytes() == (member / "previous" / "model.yaml").read_bytes()
    assert len(load_bundle(out).predictor().nets) == 2  # and it loads, its first stage with it


def test_a_resumed_second_stage_keeps_its_first_stage(synth_root, stages, tmp_path):
    from seg.config import UserError

    low, full = stages
    other = tmp_path / "other_low"
    shutil.copytree(low, other)  # the same first stage elsewhere: finished folds must not go under it
    with pytest.raises(UserError, match=rf"fold_0: finished with data.previous_stage={low} but this run has {other}"):
        kfold(compose_train(tiny_cv(synth_root, full) + [f"data.previous_stage={other}"], full, "kfold"))
