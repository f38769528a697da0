"""Documented constants of export and inference pinned at their values, each with a case on either side."""

from __future__ import annotations

import shutil

import pytest

from seg.cli.export import main as export_main
from seg.cli.predict import main as predict_main
from seg.inference import agreement
from seg.inference import export as ex
from tests.inference.conftest import make_bundle


def test_export_parity_tolerance_is_1e4_with_a_case_on_each_side(tmp_path, monkeypatch, capsys):
    assert ex.PARITY_TOL == 1e-4
    root = make_bundle(tmp_path / "b", folds=(0,))
    for diff, ok in ((0.99e-4, True), (1.01e-4, False)):
        monkeypatch.setattr(ex, "parity", lambda *a, d=diff, **k: d)
        out = tmp_path / f"o{diff:g}"
        assert export_main(["-m", str(root), "-o", str(out)]) == (0 if ok else 2)
        assert (out / "fold_0" / "model.onnx").exists() == ok
    assert "differs from PyTorch's by 0.0001 (> 0.0001); refused" in capsys.readouterr().err


def test_bf16_agreement_threshold_is_0999_with_a_case_on_each_side(tmp_path, monkeypatch, synth_root, capsys):
    assert agreement.MIN_AGREEMENT == 0.999
    bundle = make_bundle(tmp_path / "b", folds=(0,))
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(synth_root / "imagesTr" / "synth_000.nii.gz", inp / "a.nii.gz")
    for agree, code in ((0.9989, 2), (0.999, 0)):
        monkeypatch.setattr(agreement, "bf16_agreement", lambda *a, v=agree: v)
        out = tmp_path / f"o{agree}"
        args = ["-i", str(inp), "-o", str(out), "-m", str(bundle), "--precision", "bf16", "--device", "cpu", "-q"]
        assert predict_main(args) == code
        assert (out / "a.nii.gz").exists() == (code == 0)
    assert "0.9989 < 0.999" in capsys.readouterr().err


@pytest.mark.parametrize("engine", ["torch", "onnxruntime"])
def test_checkpoint_best_and_final_are_the_bundles_two_weights(tmp_path, synth_root, engine):
    """--checkpoint final (default) reads weights.pt; best reads weights_best.pt; ONNX Runtime runs the export of
    the bundle's default checkpoint only (one line otherwise)."""
    from seg.errors import UserError
    from seg.inference.bundle import load_bundle

    bundle = make_bundle(tmp_path / "b", folds=(0,))
    shutil.copy(bundle / "fold_0" / "weights.pt", bundle / "fold_0" / "weights_best.pt")
    b = load_bundle(bundle)
    if engine == "torch":
        (bundle / "fold_0" / "weights_best.pt").write_bytes(b"")
        b.predictor(checkpoint="final")
        with pytest.raises(Exception, match="weights_best.pt: weights file is empty"):
            b.predictor(checkpoint="best")
    else:
        with pytest.raises(UserError, match="--checkpoint best: the ONNX export of .* holds the final weights"):
            b.predictor(engine="onnxruntime", checkpoint="best")
