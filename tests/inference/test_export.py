"""seg-export (ONNX, TorchScript), the ONNX Runtime engine and bf16: parity with PyTorch, refusals, metadata.

Small untrained nets with three classes (argmax over random logits gives masks with every label), so that
identical masks between engines mean something. Real-data parity is in test_export_real.py (slow tier).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import onnx
import pytest
import torch
import yaml

from seg.cli.export import main as export_main
from seg.cli.predict import main as predict_main
from seg.data.transforms import Preprocessing
from seg.inference import export as ex
from seg.inference.agreement import mask_agreement
from seg.inference.bundle import BundleError, load_bundle, save_weights, write_bundle_meta
from seg.io import file_sha256
from seg.nn import create_net, list_nets
from seg.nn.registry import net_card
from tests.inference.conftest import PATCH, bundle_meta
from tests.nn.test_registry import SMALL

LABELS = {0: "background", 1: "anterior", 2: "posterior"}


def net_bundle(root: Path, name: str, folds=(0,), kwargs=None, fit: bool = False) -> Path:
    net = {"name": name, "spatial_dims": 3, "in_channels": 1, "out_channels": 3, **(kwargs or SMALL[name])}
    for k in folds:
        torch.manual_seed(10 + k)
        kw = dict(net)
        m = create_net(kw.pop("name"), **kw)
        with torch.no_grad():  # BN statistics that are not the identity, so that folding them is exercised
            for mod in m.modules():
                if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                    mod.running_mean.uniform_(-0.2, 0.2)
                    mod.running_var.uniform_(0.5, 1.5)
        if fit:
            _fit_intensity_bands(m)
        save_weights(m.state_dict(), root / f"fold_{k}" / "weights.pt")
    inferer = {"roi_size": [32, 32, 32], "overlap": 0.25}
    write_bundle_meta(root, bundle_meta(net, LABELS, ["T1"], PATCH, folds, inferer=inferer))
    return root


def _fit_intensity_bands(m: torch.nn.Module, steps: int = 60) -> None:
    """A few Adam steps towards three intensity bands of smooth noise: a net whose argmax has all three labels
    (an untrained net's argmax is one label everywhere)."""
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    m.train()
    for _ in range(steps):
        x = torch.nn.functional.avg_pool3d(torch.randn(2, 1, 32, 32, 32, generator=g), 9, 1, 0) * 9
        y = (x[:, 0] > -0.5).long() + (x[:, 0] > 0.5).long()
        out = m(x)
        loss = torch.nn.functional.cross_entropy(out[0] if isinstance(out, (list, tuple)) else out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()


REFUSED = {n: net_card(n).export for n in list_nets() if net_card(n).export}
EXPORTABLE = sorted(set(list_nets()) - set(REFUSED))


HEAVY = {"monai_attention_unet", "daunet"}


def test_every_registered_net_is_exportable_or_refused():
    assert set(EXPORTABLE) | set(REFUSED) == set(list_nets())
    assert {"unet", "agunet", "daunet"} <= set(EXPORTABLE)  # the paper's nets export


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in EXPORTABLE]
)  # the heavier nets (10-14 s each) in the slow tier
def test_exportable_net_matches_pytorch_at_two_sizes(name, tmp_path):
    bundle = load_bundle(net_bundle(tmp_path / "m", name))
    rec = ex.export_bundle(bundle, "onnx")
    path = tmp_path / "m" / "fold_0" / "model.onnx"
    assert path.is_file() and rec["parity_max_abs_softmax_diff"][0] <= ex.PARITY_TOL
    # independently of export's own check: ONNX Runtime vs the un-fused PyTorch net at two other sizes
    net = bundle.load_nets([0])[0]
    sess = ex.OrtNet(path)
    for shape in [(32, 48, 32), (64, 32, 48)]:
        x = torch.randn(2, 1, *shape)
        with torch.inference_mode():
            ref = torch.softmax(ex.Logits(net)(x), 1)
        got = torch.softmax(sess(x), 1)
        assert got.shape == ref.shape
        assert float((got - ref).abs().max()) <= 1e-4


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_net_gets_one_line_and_no_file(name, tmp_path, capsys):
    root = net_bundle(tmp_path / "m", name)
    before = (root / "model.yaml").read_text()
    assert export_main([str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and name in err and REFUSED[name][:40] in err
    assert not (root / "fold_0" / "model.onnx").exists() and (root / "model.yaml").read_text() == before


def test_parity_failure_refuses_and_writes_nothing(tmp_path, monkeypatch):
    """A runtime that disagrees with PyTorch (here: logits scaled) is caught by the check, not shipped."""
    root = net_bundle(tmp_path / "m", "unet")
    real = ex._load_exported

    def scaled(fmt, path):
        run = real(fmt, path)
        return lambda x: run(x) * 1.5

    monkeypatch.setattr(ex, "_load_exported", scaled)
    with pytest.raises(ex.ExportError, match=r"differs from PyTorch's by .* \(> 0.0001\)"):
        ex.export_bundle(load_bundle(root), "onnx")
    assert sorted(p.name for p in (root / "fold_0").iterdir()) == ["weights.pt"]


def test_model_yaml_and_onnx_metadata_describe_the_export(tmp_path):
    root = net_bundle(tmp_path / "m", "unet", folds=(0, 1))
    src_yaml = (root / "model.yaml").read_text()
    out = tmp_path / "copy"
    assert export_main([str(root), "--folds", "1", "-o", str(out)]) == 0
    # the source bundle is untouched; the copy has fold 1 only, with weights and the ONNX file
    assert (root / "model.yaml").read_text() == src_yaml and not list(root.rglob("*.onnx"))
    meta = yaml.safe_load((out / "model.yaml").read_text())
    assert meta["folds"] == [1] and (out / "fold_1" / "weights.pt").is_file()
    rec = meta["export"]["onnx"]
    assert rec["opset"] == ex.OPSET and rec["folds"] == [1] and rec["dynamic_axes"] == ["N", "D", "H", "W"]
    assert rec["versions"]["torch"] == str(torch.__version__) and rec["versions"]["onnx"] == onnx.__version__
    model = onnx.load(str(out / "fold_1" / "model.onnx"))
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["seg_labels"]) == {str(k): v for k, v in LABELS.items()}
    assert json.loads(props["seg_channel_names"]) == ["T1"] and props["seg_format"] == "seg-model/1"
    assert json.loads(props["seg_preprocessing"]) == Preprocessing.from_mapping(PATCH).as_dict()
    assert props["seg_net"] == "unet"
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims][1] == 1 and all(dims[i].dim_param for i in (0, 2, 3, 4))
    # the copy predicts with either engine
    assert load_bundle(out).predictor(engine="onnxruntime").nets[0].path == out / "fold_1" / "model.onnx"


def test_torchscript_export_matches(tmp_path):
    root = net_bundle(tmp_path / "m", "agunet")
    rec = ex.export_bundle(load_bundle(root), "torchscript")
    ts = torch.jit.load(str(root / "fold_0" / "model.ts"))
    net = load_bundle(root).load_nets([0])[0]
    x = torch.randn(1, 1, 48, 32, 32)
    with torch.inference_mode():
        diff = (torch.softmax(ts(x), 1) - torch.softmax(ex.Logits(net)(x), 1)).abs().max()
    assert float(diff) <= 1e-4 and "torchscript" in yaml.safe_load((root / "model.yaml").read_text())["export"]
    assert rec["parity_max_abs_softmax_diff"][0] <= 1e-4


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A two-fold 3-class U-Net bundle, exported to ONNX."""
    root = net_bundle(tmp_path_factory.mktemp("exp") / "m", "unet", folds=(0, 1), fit=True)
    ex.export_bundle(load_bundle(root), "onnx")
    return root


@pytest.mark.parametrize("tta", [False, True], ids=["plain", "tta"])
def test_engines_give_the_same_probabilities_and_masks(exported, synth_root, tta):
    bundle = load_bundle(exported)
    img = sorted((synth_root / "imagesTr").glob("*.nii.gz"))[0]
    p_torch = bundle.predictor(tta=tta).predict(str(img))
    ort_pred = bundle.predictor(tta=tta, engine="onnxruntime")
    p_ort = ort_pred.predict(str(img))
    assert len({id(n.session) for n in ort_pred.nets}) == 2  # one session per fold, made once
    for n in ort_pred.nets:  # the process's thread count, and one shared memory arena (not one per fold)
        opts = n.session.get_session_options()
        assert opts.intra_op_num_threads == torch.get_num_threads()
        assert opts.get_session_config_entry("session.use_env_allocators") == "1"
    assert float((p_torch.probabilities - p_ort.probabilities).abs().max()) <= 1e-4
    assert np.array_equal(p_torch.labels, p_ort.labels) and len(np.unique(p_torch.labels)) >= 2


def test_predict_cli_engine_switch_and_errors(exported, synth_root, tmp_path, capsys, monkeypatch):
    inp = synth_root / "imagesTr"
    base = ["-i", str(inp), "-m", str(exported), "-q", "--folds", "0"]
    assert predict_main([*base, "-o", str(tmp_path / "t")]) == 0
    assert predict_main([*base, "-o", str(tmp_path / "o"), "--engine", "onnxruntime"]) == 0
    for f in sorted((tmp_path / "t").glob("*.nii.gz")):
        a, b = (np.asarray(nib.load(d / f.name).dataobj) for d in (tmp_path / "t", tmp_path / "o"))
        assert np.array_equal(a, b)
    capsys.readouterr()
    assert predict_main([*base, "-o", str(tmp_path / "x"), "--engine", "onnxruntime", "--precision", "bf16"]) == 2
    assert "no bf16" in capsys.readouterr().err
    # -i/-o/-m from the environment (the Docker image's defaults), so extra flags can replace CMD
    monkeypatch.setenv("SEG_INPUT", str(inp))
    monkeypatch.setenv("SEG_OUTPUT", str(tmp_path / "env"))
    monkeypatch.setenv("SEG_MODEL", str(exported))
    assert predict_main(["--engine", "onnxruntime", "-q", "--folds", "1"]) == 0
    assert len(list((tmp_path / "env").glob("*.nii.gz"))) == len(list(inp.glob("*.nii.gz")))


def test_onnx_engine_without_export_is_one_line(tmp_path, synth_root, capsys):
    root = net_bundle(tmp_path / "m", "unet")
    img = str(sorted((synth_root / "imagesTr").glob("*.nii.gz"))[0])
    assert predict_main(["-i", img, "-o", str(tmp_path / "o"), "-m", str(root), "--engine", "onnxruntime"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "model.onnx: missing" in err and "seg-export" in err
    (root / "fold_0" / "model.onnx").write_bytes(b"not onnx")
    with pytest.raises(BundleError, match="model.onnx: not recorded in model.yaml's export"):
        load_bundle(root).predictor(engine="onnxruntime")
    # recorded (as if seg-export had written it) but not an ONNX model: named by ONNX Runtime's loader
    b = load_bundle(root)
    rec = {
        "sha256": file_sha256(root / "fold_0" / "model.onnx"),
        "weights_sha256": file_sha256(root / "fold_0" / "weights.pt"),
    }
    b.meta.extra["export"] = {"onnx": {"files": {"fold_0": rec}}}
    write_bundle_meta(root, b.meta)
    with pytest.raises(BundleError, match="model.onnx: not a loadable ONNX model"):
        load_bundle(root).predictor(engine="onnxruntime")


def test_mask_agreement_convention():
    a = np.array([0, 1, 1, 2, 2, 0])
    b = np.array([0, 1, 0, 2, 2, 2])
    # label 1: 2*1/(2+1); label 2: 2*2/(2+3)
    assert mask_agreement(a, b, [0, 1, 2]) == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert mask_agreement(a, a, [0, 1, 2, 3]) == 1.0  # label 3 empty in both: agrees


def test_bf16_runs_in_bf16_and_is_checked_before_any_case(exported, synth_root, tmp_path, capsys, monkeypatch):
    import seg.inference.agreement as agreement

    bundle = load_bundle(exported)
    img = str(sorted((synth_root / "imagesTr").glob("*.nii.gz"))[0])
    p32 = bundle.predictor([0]).predict(img).probabilities
    p16 = bundle.predictor([0], precision="bf16").predict(img).probabilities
    diff = float((p32 - p16).abs().max())
    assert 1e-4 < diff < 0.1  # autocast is on (bf16 rounds), and close
    base = ["-i", str(synth_root / "imagesTr"), "-m", str(exported), "-q", "--folds", "0", "--precision", "bf16"]
    monkeypatch.setattr(agreement, "MIN_AGREEMENT", 1.01)  # nothing can agree that well: refused
    assert predict_main([*base, "-o", str(tmp_path / "no")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bf16 refused" in err and "< 1.01" in err
    assert not list((tmp_path / "no").glob("*.nii.gz"))  # nothing predicted
    monkeypatch.setattr(agreement, "MIN_AGREEMENT", 0.5)
    assert predict_main([*base, "-o", str(tmp_path / "yes")]) == 0
    out = capsys.readouterr().out
    figure = float(out.split("bf16 agreement: Dice ")[1].split()[0])
    first = sorted((synth_root / "imagesTr").glob("*.nii.gz"))[0]
    m32 = bundle.predictor([0]).predict(str(first)).labels
    m16 = np.asarray(nib.load(tmp_path / "yes" / first.name).dataobj)
    assert figure == pytest.approx(mask_agreement(m32, m16, sorted(LABELS)), abs=1e-4)
