"""seg-predict: grids, robustness (bad files, killed runs, no overwrite), reports, channels."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import scipy.ndimage
import torch

from seg.cli.predict import main
from seg.inference.bundle import load_bundle
from tests.conftest import REPO, shared
from tests.inference.conftest import PATCH, bundle_meta, make_bundle


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture
def mixed_input(synth_root, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    imgs = sorted((synth_root / "imagesTr").iterdir())
    shutil.copy(imgs[0], inp / imgs[0].name)
    # the second good case on an anisotropic grid (1 x 1.5 x 2.5 mm): its report's volume is voxels x the
    # product of the spacings, which an isotropic case cannot tell from the first spacing cubed
    img = nib.load(str(imgs[1]))
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), np.diag([1.0, 1.5, 2.5, 1.0])), str(inp / imgs[1].name))
    raw = imgs[2].read_bytes()
    (inp / "corrupt.nii.gz").write_bytes(raw[: len(raw) // 3])
    nib.save(nib.Nifti1Image(np.zeros((20, 20), np.float32), np.eye(4)), str(inp / "flat2d.nii.gz"))
    a = np.ones((16, 16, 16), np.float32)
    a[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(a, np.eye(4)), str(inp / "nan.nii"))
    return inp


def test_case_report_volume_is_voxels_times_the_product_of_the_spacings():
    from seg.inference.batch import case_report

    m = np.zeros((10, 10, 10), np.uint8)
    m[1:3, 1:3, 1:3] = 1  # 8 voxels
    m[6:9, 6:9, 6:9] = 2  # 27 voxels, another label
    m[5, 0, 0] = 1  # a second component of label 1
    rep = case_report(m, {0: "background", 1: "a", 2: "b"}, (1.0, 1.5, 2.5))
    assert (rep["a"]["label"], rep["a"]["components"], rep["b"]["label"], rep["b"]["components"]) == (1, 2, 2, 1)
    assert rep["a"]["volume_ml"] == pytest.approx(9 * 3.75 / 1000, abs=1e-4)  # 1 x 1.5 x 2.5 mm voxels
    assert rep["b"]["volume_ml"] == pytest.approx(27 * 3.75 / 1000, abs=1e-4)


def test_bad_files_are_listed_good_ones_written(tiny_bundle, mixed_input, tmp_path, capsys):
    before = _digest(mixed_input)
    out = tmp_path / "out"
    code = main(["-i", str(mixed_input), "-o", str(out), "-m", str(tiny_bundle), "-q", "--png"])
    err = capsys.readouterr().err
    assert code == 1
    assert _digest(mixed_input) == before  # inputs untouched
    good = sorted(p.name for p in mixed_input.iterdir() if p.name.startswith("synth"))
    for name in good:
        src, mask = nib.load(str(mixed_input / name)), nib.load(str(out / name))
        assert mask.shape == src.shape and np.array_equal(mask.affine, src.affine) and mask.get_data_dtype() == np.uint8
        rep = json.loads((out / name.replace(".nii.gz", ".json")).read_text())
        assert set(rep["labels"]["lesion"]) == {"label", "volume_ml", "components"}
        # the report's figures are the mask's: voxels x voxel volume, and its 26-connected components
        fg = np.asanyarray(mask.dataobj) == 1
        voxel_ml = float(np.prod(mask.header.get_zooms()[:3])) / 1000
        assert rep["labels"]["lesion"]["volume_ml"] == pytest.approx(fg.sum() * voxel_ml, abs=1e-4)
        assert rep["labels"]["lesion"]["components"] == scipy.ndimage.label(fg, np.ones((3, 3, 3)))[1]
        assert {"preprocess", "infer", "invert", "write"} <= set(rep["seconds"])
        assert (out / name.replace(".nii.gz", ".png")).stat().st_size > 1000
    for bad, why in (("corrupt", "truncated"), ("flat2d", "2D"), ("nan", "NaN")):
        assert not (out / f"{bad}.nii.gz").exists() and not (out / f"{bad}.nii").exists()
        assert any(line.startswith(f"FAILED {bad}:") and why in line for line in err.splitlines()), err
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert len(rows) == 5 and sum(r["mask"].startswith("FAILED") for r in rows) == 3
    assert not [p for p in out.iterdir() if ".part" in p.name]  # no temporary files left


def test_output_equal_to_input_is_refused(tiny_bundle, synth_copy, capsys):
    inp = synth_copy / "imagesTr"
    before = _digest(inp)
    assert main(["-i", str(inp), "-o", str(inp), "-m", str(tiny_bundle), "-q"]) == 2
    one = sorted(inp.iterdir())[0]
    assert main(["-i", str(one), "-o", str(inp), "-m", str(tiny_bundle), "-q"]) == 2
    assert "never overwritten" in capsys.readouterr().err
    assert _digest(inp) == before


def test_bad_bundle_and_folds(tiny_bundle, synth_root, tmp_path, capsys):
    img = str(sorted((synth_root / "imagesTr").iterdir())[0])
    assert main(["-i", img, "-o", str(tmp_path / "o"), "-m", str(tmp_path), "-q"]) == 2
    assert "model.yaml missing" in capsys.readouterr().err
    assert main(["-i", img, "-o", str(tmp_path / "o"), "-m", str(tiny_bundle), "--folds", "0,7", "-q"]) == 2
    assert "folds [7] not in the bundle" in capsys.readouterr().err
    assert main(["-i", img, "-o", str(tmp_path / "o"), "-m", str(tiny_bundle), "--folds", "1", "-q", "--tta"]) == 0


def test_nnunet_channel_files_grouped_and_missing_channel_reported(synth_root, tmp_path, capsys):
    bundle = make_bundle(tmp_path / "m2", channels=("T1", "T2"), folds=(0,))
    inp = tmp_path / "in"
    inp.mkdir()
    imgs = sorted((synth_root / "imagesTr").iterdir())
    for i, f in enumerate(imgs[:2]):
        shutil.copy(f, inp / f"case{i}_0000.nii.gz")
    shutil.copy(imgs[0], inp / "case0_0001.nii.gz")  # case1 has no second channel
    out = tmp_path / "out"
    assert main(["-i", str(inp), "-o", str(out), "-m", str(bundle), "-q"]) == 1
    assert (out / "case0.nii.gz").exists() and not (out / "case1.nii.gz").exists()
    assert "case1_0001 missing" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("brainchop_t1_crop_1mm_256.nii.gz", marks=pytest.mark.slow),
        "IXI012-HH-1211_T1_2mm.nii.gz",
        "IXI015-HH-1258_T1_2mm.nii.gz",
    ],
)
def test_round_trip_real_t1_orientations(tiny_bundle, tmp_path, name):
    src_path = shared("brain_t1") / name
    out = tmp_path / "out"
    assert main(["-i", str(src_path), "-o", str(out), "-m", str(tiny_bundle), "-q", "--folds", "0"]) == 0
    src, mask = nib.load(str(src_path)), nib.load(str(out / name))
    assert mask.shape == src.shape[:3]
    np.testing.assert_array_equal(mask.affine, src.affine)
    assert nib.aff2axcodes(mask.affine) == nib.aff2axcodes(src.affine)
    for code in ("qform_code", "sform_code"):
        assert int(mask.header[code]) == int(src.header[code])
    assert mask.get_data_dtype() == np.uint8


def test_multilabel_non_consecutive_ids(tmp_path):
    lab_path = shared("multilabel") / "ct_abdomen_3mm_seg41.nii.gz"
    img_path = shared("multilabel") / "ct_abdomen_3mm.nii.gz"
    ids = sorted(int(v) for v in np.unique(np.asanyarray(nib.load(str(lab_path)).dataobj)))
    assert ids != list(range(len(ids)))  # the quirk under test
    pre = {
        "mode": "patch",
        "spacing": None,
        "orientation": "RAS",
        "normalize": {"mode": "window", "window": [-200, 300]},
    }
    bundle = make_bundle(tmp_path / "m", labels={i: f"l{i}" for i in ids}, folds=(0,), preprocessing=pre)
    out = tmp_path / "out"
    assert main(["-i", str(img_path), "-o", str(out), "-m", str(bundle), "-q"]) == 0
    src, mask = nib.load(str(img_path)), nib.load(str(out / img_path.name))
    assert mask.shape == src.shape and np.array_equal(mask.affine, src.affine)
    assert set(np.unique(np.asanyarray(mask.dataobj)).tolist()) <= set(ids)


def test_killed_run_leaves_no_partial_mask(tiny_bundle, synth_root, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    for i in range(6):
        for f in sorted((synth_root / "imagesTr").iterdir()):
            shutil.copy(f, inp / f"r{i}_{f.name}")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(
        [sys.executable, "-m", "seg.cli.predict", "-i", str(inp), "-o", str(out), "-m", str(tiny_bundle), "-q"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None and not (out.exists() and len(list(out.glob("*.json"))) >= 2):
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    masks = [m for m in out.glob("*.nii.gz") if not m.name.startswith(".")]
    assert masks, "killed before any mask was written: nothing tested"
    assert len(masks) < 48
    for m in masks:  # every mask with a final name is complete
        assert np.asanyarray(nib.load(str(m)).dataobj).shape == (32, 32, 32)


def test_operating_point_printed_and_applied(synth_root, tmp_path, capsys):
    # argmax first, with the probabilities; then a bundle of the same weights with a k-fold threshold at
    # their median: applied by default (mask == prob >= t voxel by voxel) and said so; --threshold argmax
    # and a given value override it
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(synth_root / "imagesTr" / "synth_000.nii.gz", inp / "a.nii.gz")
    plain = make_bundle(tmp_path / "m0", folds=(0,))
    assert main(["-i", str(inp), "-o", str(tmp_path / "p"), "-m", str(plain), "-q", "--save-probabilities"]) == 0
    prob = np.asarray(nib.load(str(tmp_path / "p" / "a_prob.nii.gz")).dataobj)[..., 1]
    t = float(np.round(np.median(prob), 3))
    bundle = make_bundle(tmp_path / "m", folds=(0,), threshold=t)
    masks = {}
    for name, extra in (("bundle", []), ("argmax", ["--threshold", "argmax"]), ("given", ["--threshold", "0.999"])):
        capsys.readouterr()
        assert main(["-i", str(inp), "-o", str(tmp_path / name), "-m", str(bundle), "-q", *extra]) == 0
        out = capsys.readouterr().out
        masks[name] = np.asarray(nib.load(str(tmp_path / name / "a.nii.gz")).dataobj)
        line = next(x for x in out.splitlines() if x.startswith("operating point:"))
        expected = {
            "bundle": f"foreground probability >= {t:g} (the bundle's, from its k-fold threshold scan",
            "argmax": "argmax (--threshold argmax)",
            "given": "foreground probability >= 0.999 (--threshold)",
        }[name]
        assert expected in line, line
    assert np.array_equal(masks["bundle"], (prob >= t).astype(np.uint8))
    assert np.array_equal(masks["argmax"], np.asarray(nib.load(str(tmp_path / "p" / "a.nii.gz")).dataobj))
    assert 0 < masks["bundle"].sum() < masks["bundle"].size and masks["given"].sum() <= masks["bundle"].sum()
    rc = main(["-i", str(inp), "-o", str(tmp_path / "x"), "-m", str(bundle), "--threshold", "1.5"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--threshold '1.5': give a probability in (0, 1] or 'argmax'" in err
    assert not (tmp_path / "x").exists()  # refused before anything was made


def test_writer_failing_half_way_leaves_no_final_name(tiny_bundle, synth_root, tmp_path, monkeypatch, capsys):
    # atomicity by construction, not by luck: the mask writer dies after half the bytes; the case fails,
    # no file has the mask's final name, no temporary is left, the other cases are written
    import seg.io

    real_save = nib.save
    calls = {"n": 0}

    def half_then_fail(img, path):
        calls["n"] += 1
        if calls["n"] == 2:  # the second case's mask
            real_save(img, path)
            data = Path(path).read_bytes()
            Path(path).write_bytes(data[: len(data) // 2])
            raise OSError(28, "No space left on device")
        return real_save(img, path)

    monkeypatch.setattr(seg.io.nib, "save", half_then_fail)
    inp = tmp_path / "in"
    inp.mkdir()
    names = sorted(f.name for f in (synth_root / "imagesTr").iterdir())[:3]
    for n in names:
        shutil.copy(synth_root / "imagesTr" / n, inp / n)
    out = tmp_path / "out"
    assert main(["-i", str(inp), "-o", str(out), "-m", str(tiny_bundle), "-q", "--folds", "0"]) == 1
    err = capsys.readouterr().err
    assert f"FAILED {names[1].replace('.nii.gz', '')}" in err and "No space left" in err
    assert not (out / names[1]).exists()
    assert (out / names[0]).exists() and (out / names[2]).exists()
    assert not [p for p in out.iterdir() if ".part" in p.name]


def test_predict_options_overlap_workers_device_probabilities(tiny_bundle, synth_root, tmp_path, monkeypatch, capsys):
    import seg.inference.bundle as bundle_mod

    inp = tmp_path / "in"
    inp.mkdir()
    for f in sorted((synth_root / "imagesTr").iterdir())[:3]:
        shutil.copy(f, inp / f.name)
    seen = []
    real = bundle_mod.Bundle.predictor

    def spy(self, *a, **kw):
        pr = real(self, *a, **kw)
        seen.append(pr)
        return pr

    monkeypatch.setattr(bundle_mod.Bundle, "predictor", spy)
    base = ["-i", str(inp), "-m", str(tiny_bundle), "-q", "--folds", "0"]
    assert main([*base, "-o", str(tmp_path / "w1"), "--workers", "1", "--device", "cpu"]) == 0
    assert main([*base, "-o", str(tmp_path / "w3"), "--workers", "3", "--overlap", "0.75", "--save-probabilities"]) == 0
    # --overlap reaches the inferer (the bundle's 0.25 otherwise); --device cpu is used
    assert seen[0].inferer.overlap == 0.25 and seen[1].inferer.overlap == 0.75
    assert seen[0].device == torch.device("cpu")
    for f in sorted(inp.iterdir()):
        a = np.asarray(nib.load(str(tmp_path / "w1" / f.name)).dataobj)
        assert (tmp_path / "w3" / f.name).is_file() and a.shape == (32, 32, 32)
        # --save-probabilities: one channel per class, summing to 1, whose argmax is the mask
        prob = np.asarray(nib.load(str(tmp_path / "w3" / f.name.replace(".nii.gz", "_prob.nii.gz"))).dataobj)
        mask = np.asarray(nib.load(str(tmp_path / "w3" / f.name)).dataobj)
        assert prob.shape == (32, 32, 32, 2) and prob.dtype == np.float32
        np.testing.assert_allclose(prob.sum(-1), 1.0, atol=1e-5)
        assert np.array_equal(prob.argmax(-1), mask)
    # --workers only reads ahead: the same overlap with 1 and 3 workers gives byte-identical masks
    assert main([*base, "-o", str(tmp_path / "w1b"), "--workers", "1", "--overlap", "0.75"]) == 0
    for f in sorted(inp.iterdir()):
        assert (tmp_path / "w1b" / f.name).read_bytes() == (tmp_path / "w3" / f.name).read_bytes()
    # --device cuda without a GPU: one line, exit 2, before any case
    capsys.readouterr()
    if not torch.cuda.is_available():
        assert main([*base, "-o", str(tmp_path / "cuda"), "--device", "cuda"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "cuda" in err[0].lower() and not (tmp_path / "cuda" / "summary.csv").exists()


@pytest.mark.parametrize("axes, passes", [([], None), ([0, 2], 4)])
def test_tta_says_what_it_averages_and_follows_the_bundles_mirror_axes(synth_root, tmp_path, capsys, axes, passes):
    from seg.inference.bundle import load_bundle, write_bundle_meta

    root = make_bundle(tmp_path / "b", folds=(0,))
    b = load_bundle(root)
    b.meta.mirror_axes = axes
    write_bundle_meta(root, b.meta)
    assert load_bundle(root).meta.mirror_axes == axes  # recorded in model.yaml
    img = str(sorted((synth_root / "imagesTr").iterdir())[0])
    capsys.readouterr()
    assert main(["-i", img, "-o", str(tmp_path / "tta"), "-m", str(root), "-q", "--tta"]) == 0
    text = capsys.readouterr().out
    if passes is None:
        assert "TTA: nothing to average" in text
        assert main(["-i", img, "-o", str(tmp_path / "plain"), "-m", str(root), "-q"]) == 0
        name = Path(img).name
        same = [np.asanyarray(nib.load(str(tmp_path / d / name)).dataobj) for d in ("tta", "plain")]
        assert np.array_equal(*same)
    else:
        assert f"TTA: the mean over {passes} mirrorings of axes {axes}" in text
        # README: --tta is off by default: without it, one pass and no TTA line (#46 item 7)
        from unittest import mock

        from seg.inference import predictor

        with mock.patch.object(
            predictor.Predictor, "__init__", autospec=True, side_effect=predictor.Predictor.__init__
        ) as init:
            assert main(["-i", img, "-o", str(tmp_path / "plain"), "-m", str(root), "-q"]) == 0
        assert "TTA" not in capsys.readouterr().out and init.call_args.kwargs.get("tta", False) is False


def test_a_bundle_with_mirror_axes_outside_0_to_2_is_one_line(tmp_path):
    import yaml

    from seg.inference.bundle import BundleError, load_bundle

    root = make_bundle(tmp_path / "b", folds=(0,))
    meta = yaml.safe_load((root / "model.yaml").read_text())
    meta["mirror_axes"] = [0, 3]
    (root / "model.yaml").write_text(yaml.safe_dump(meta))
    with pytest.raises(BundleError, match="mirror_axes"):
        load_bundle(root)


@pytest.mark.parametrize(
    "asked, trained, engine, fast, want",
    [
        ("auto", "bf16", "torch", True, ("bf16", "auto")),
        ("auto", "bf16", "torch", False, ("fp32", "")),  # no native bf16 here: emulated bf16 is slower
        ("auto", "bf16", "onnxruntime", True, ("fp32", "")),
        ("auto", "fp32", "torch", True, ("fp32", "")),
        ("auto", None, "torch", True, ("fp32", "")),  # a bundle from before the record
        ("fp32", "bf16", "torch", True, ("fp32", "asked")),
        ("bf16", "fp32", "torch", False, ("bf16", "asked")),
    ],
)
def test_precision_auto_follows_the_training_and_the_machine(monkeypatch, asked, trained, engine, fast, want):
    from seg.run import predict as run_predict

    monkeypatch.setattr(run_predict, "bf16_supported", lambda device: fast)
    assert run_predict.choose_precision(asked, trained, engine, "cpu") == want


def test_auto_bf16_falls_back_to_fp32_where_asked_bf16_is_refused(tiny_bundle, synth_root, monkeypatch):
    from seg.errors import UserError
    from seg.inference import agreement
    from seg.inference.cases import discover
    from seg.run.predict import bf16_note

    cases = discover(synth_root / "imagesTr", 1)[:1]
    predictor = load_bundle(tiny_bundle).predictor([0], precision="bf16")
    monkeypatch.setattr(agreement, "bf16_agreement", lambda p, files: 0.9)
    line = bf16_note(predictor, "M", cases, "auto")
    assert predictor.precision == "fp32"
    assert line.startswith("precision: fp32, though the model trained in bf16: Dice between its fp32 and bf16")
    predictor.precision = "bf16"
    with pytest.raises(UserError, match="--precision bf16 refused"):
        bf16_note(predictor, "M", cases, "asked")
    monkeypatch.setattr(agreement, "bf16_agreement", lambda p, files: 0.9995)
    assert bf16_note(predictor, "M", cases, "auto").startswith("precision: bf16, as the model trained")
    assert predictor.precision == "bf16"


def test_a_run_bundle_records_its_training_precision(tmp_path):
    from seg.inference.bundle import export_run_bundle
    from seg.nn import create_net

    net = {"name": "unet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2, "filters": [4, 8, 8]}
    kw = dict(net)
    state = create_net(kw.pop("name"), **kw).state_dict()
    meta = bundle_meta(net, {0: "bg", 1: "fg"}, ["T1"], PATCH, [0])
    hp = {"net": net, "inferer": meta.inferer.as_dict()}
    for precision in ("bf16-mixed", "fp32"):
        export_run_bundle(tmp_path / precision, state, None, hp, meta, meta.preprocessing, 0, None, precision)
        assert load_bundle(tmp_path / precision).meta.extra["precision"] == precision[:4]


def test_a_label_every_training_case_held_empty_in_a_prediction_is_a_warning(tmp_path, synth_root, caplog, monkeypatch):
    """#41: a prediction without a structure every training case held (another modality, a crop) says so."""
    import logging
    import shutil

    from seg.cli.predict import main
    from seg.inference.bundle import load_bundle, write_bundle_meta
    from seg.inference.predictor import Predictor
    from tests.inference.conftest import make_bundle

    root = make_bundle(tmp_path / "b", folds=(0,))
    b = load_bundle(root)
    b.meta.extra["labels_always"] = [1]
    write_bundle_meta(root, b.meta)
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(synth_root / "imagesTr" / "synth_000.nii.gz", inp / "a.nii.gz")
    shutil.copy(synth_root / "imagesTr" / "synth_001.nii.gz", inp / "b.nii.gz")

    def labels_from(self, prob):  # the net's map: background in case a, the label in case b
        out = np.zeros(prob.shape[1:], np.uint8)
        out[:4, :4, :4] = int(float(prob.sum()) > float(labels_from.first))
        labels_from.first = -1.0
        return out

    labels_from.first = float("inf")
    monkeypatch.setattr(Predictor, "labels_from", labels_from)
    with caplog.at_level(logging.WARNING):
        assert main(["-i", str(inp), "-o", str(tmp_path / "out"), "-m", str(root), "-q"]) == 0
    said = [r.getMessage() for r in caplog.records if "every training case held" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("a: ")
