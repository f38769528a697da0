"""Faults, round two: silent wrong output, signals' neighbours, and the one exit-code rule, as rows.

Each row: what is broken (``setup`` on a fresh copy of a working set-up), the command run on it, the exit
code (0 done, 1 some cases failed, 2 refused before any work: seg.errors.ExitCode), the file or option the
one-line message must name, and what must hold afterwards (inputs unchanged, no partial file under a
final name, earlier outputs kept). Commands run in-process through their ``main``, so an uncaught
exception fails the row instead of reaching a user as a traceback. The signal rows are in test_signals.py.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from seg.errors import ExitCode
from tests.conftest import REPO, TINY, compose_train
from tests.faults.test_faults import Env, _record, evaluate, masks_of_good, predict
from tests.inference.conftest import make_bundle


def _meta(e: Env, fn) -> Path:
    p = e.bundle / "model.yaml"
    meta = yaml.safe_load(p.read_text())
    fn(meta)
    p.write_text(yaml.safe_dump(meta, sort_keys=False))
    return p


def _exported(e: Env) -> None:
    from seg.cli.export import main as export_main

    assert export_main(["-m", str(e.bundle)]) == 0


def _nothing_made(e: Env) -> bool:
    return not e.out.exists()


# -- seg-predict: silent wrong output ---------------------------------------------------------------------
def label_256(e):
    e.bundle = make_bundle(e.tmp / "m256", labels={0: "background", 256: "lesion"}, folds=(0,))
    return e.bundle / "model.yaml"


def mask_holds_256(e):
    m = nib.load(e.out / "case0.nii.gz")
    d = np.asanyarray(m.dataobj)
    return m.get_data_dtype() == np.uint16 and set(np.unique(d).tolist()) <= {0, 256} and (d == 256).any()


def labels_not_outputs(e):
    return _meta(e, lambda m: m["labels"].update({2: "extra"}))


def labels_not_outputs_hidden(e):
    """3 labels, the net's out_channels left out of model.yaml: found from the weights' own outputs."""
    return _meta(e, lambda m: (m["labels"].update({2: "extra"}), m["net"].pop("out_channels")))


def threshold_5(e):
    return _meta(e, lambda m: m.update(threshold=5))


def folds_empty(e):
    return _meta(e, lambda m: m.update(folds=[]))


def channels_empty(e):
    return _meta(e, lambda m: m.update(channel_names=[]))


def onnx_swapped(e):
    _exported(e)
    other = make_bundle(e.tmp / "other", labels={0: "bg", 1: "a", 2: "b"}, folds=(0,))
    from seg.cli.export import main as export_main

    assert export_main(["-m", str(other)]) == 0
    shutil.copy(other / "fold_0" / "model.onnx", e.bundle / "fold_0" / "model.onnx")
    return e.bundle / "fold_0" / "model.onnx"


def onnx_stale(e):
    _exported(e)
    from seg.inference.bundle import save_weights
    from seg.nn import create_net

    torch.manual_seed(99)  # retrained weights, the export left as it was
    net = create_net("unet", spatial_dims=3, in_channels=1, out_channels=2, filters=[4, 8, 8])
    save_weights(net.state_dict(), e.bundle / "fold_0" / "weights.pt")
    return e.bundle / "fold_0" / "model.onnx"


def onnx_unrecorded(e):
    _exported(e)
    _meta(e, lambda m: m.pop("export"))
    return e.bundle / "fold_0" / "model.onnx"


def folder_in_use(e):
    from seg.io import FolderLock

    e.extra["lock"] = FolderLock(e.out, "seg-predict").__enter__()  # another run holds the output folder
    return e.out


def released(e):
    e.extra["lock"].__exit__(None, None, None)
    return not list(e.out.glob("*.nii.gz"))


def continue_adds_to_summary(e):
    assert predict(e) == 0
    shutil.copy(e.inp / "case0.nii.gz", e.inp / "case3.nii.gz")
    return e.out


def summary_has_four(e):
    rows = list(csv.DictReader(open(e.out / "summary.csv")))
    return sorted(r["case"] for r in rows) == ["case0", "case1", "case2", "case3"]


def half_written_case(e):
    """case0's report and probabilities written, then the disk was full before its mask: --continue redoes it."""
    assert predict(e) == 0
    (e.out / "case0.nii.gz").unlink()
    return e.out


def continue_redid_case0(e):
    return (e.out / "case0.nii.gz").is_file() and summary_has_three(e)


def summary_has_three(e):
    return sorted(r["case"] for r in csv.DictReader(open(e.out / "summary.csv"))) == ["case0", "case1", "case2"]


def refused_leaves_nothing(e):
    (e.bundle / "model.yaml").write_text("format: [unclosed\n")
    e.extra["o"] = e.tmp / "new" / "out"
    return e.bundle / "model.yaml"


def disk_full_at_summary(e):
    import seg.inference.batch as batch

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    e.extra["restore"] = batch.write_summary_csv
    batch.write_summary_csv = full
    return Path("summary.csv")


def masks_kept_after_full_disk(e):
    import seg.inference.batch as batch

    batch.write_summary_csv = e.extra["restore"]
    return masks_of_good(e) and (e.out / "case0.nii.gz").exists() and not list(e.out.glob(".*part*"))


def nan_affine(e):
    p = e.inp / "case0.nii.gz"
    img = nib.load(p)
    hdr = img.header.copy()
    aff = img.affine.copy()
    aff[0, 3] = np.nan
    hdr.set_qform(None, code=0)
    hdr["srow_x"] = aff[0]
    hdr.set_sform(None, code=1)
    hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = aff[0], aff[1], aff[2]
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), None, hdr), p)
    assert not np.isfinite(nib.load(p).affine).all()
    return p


def huge_header(e):
    """A 2000^3 float32 header over 70 bytes of data: 32 GB declared."""
    p = e.inp / "case0.nii"
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((2000, 2000, 2000))
    hdr.set_data_dtype(np.float32)
    hdr["vox_offset"] = 352
    (e.inp / "case0.nii.gz").unlink()
    p.write_bytes(hdr.binaryblock + b"\0" * 4 + b"\1" * 70)
    return p


def folder_named_nifti(e):
    (e.inp / "case9.nii.gz").mkdir()
    return e.inp / "case9.nii.gz"


def broken_link(e):
    (e.inp / "case9.nii.gz").symlink_to(e.tmp / "nowhere.nii.gz")
    return e.inp / "case9.nii.gz"


def mask_of_case0(e):
    return (e.out / "case0.nii.gz").exists() and masks_of_good(e)


PREDICT_ROWS = [
    ("label-id-256-not-cast-to-uint8", label_256, predict, ["--threshold", "0.01"], 0, None, mask_holds_256),
    ("labels-more-than-net-outputs", labels_not_outputs, predict, [], 2, "output channels", _nothing_made),
    ("labels-more-than-weights-outputs", labels_not_outputs_hidden, predict, [], 2, "predicts 2 classes",
     _nothing_made),
    ("bundle-threshold-5", threshold_5, predict, [], 2, "threshold 5", _nothing_made),
    ("bundle-folds-empty", folds_empty, predict, [], 2, "folds is empty", _nothing_made),
    ("bundle-channel-names-empty", channels_empty, predict, [], 2, "channel_names is empty", _nothing_made),
    ("onnx-swapped-for-another-model", onnx_swapped, predict, ["--engine", "onnxruntime", "--device", "cpu"], 2,
     "changed since seg-export wrote it", _nothing_made),
    ("onnx-stale-after-new-weights", onnx_stale, predict, ["--engine", "onnxruntime", "--device", "cpu"], 2,
     "exported from other weights", _nothing_made),
    ("onnx-not-recorded", onnx_unrecorded, predict, ["--engine", "onnxruntime", "--device", "cpu"], 2,
     "not recorded", _nothing_made),
    ("output-folder-in-use", folder_in_use, predict, [], 2, "in use by pid", released),
    ("continue-adds-to-summary", continue_adds_to_summary, predict, ["--continue"], 0, None, summary_has_four),
    ("continue-redoes-half-written-case", half_written_case, predict, ["--continue"], 0, None, continue_redid_case0),
    ("refused-leaves-no-output-folder", refused_leaves_nothing, predict, [], 2, "not valid YAML",
     lambda e: not (e.tmp / "new").exists()),
    ("disk-full-at-summary", disk_full_at_summary, predict, [], 1, "summary.csv", masks_kept_after_full_disk),
    ("input-nan-affine", nan_affine, predict, [], 1, "NaN or infinite", masks_of_good),
    ("input-header-declares-32-gb", huge_header, predict, [], 1, "2000x2000x2000", masks_of_good),
    ("input-folder-named-nifti", folder_named_nifti, predict, [], 1, "a folder, not a NIfTI file", mask_of_case0),
    ("input-broken-link", broken_link, predict, [], 1, "a broken link", mask_of_case0),
]  # fmt: skip


# -- seg-eval ------------------------------------------------------------------------------------------------
def custom_dataset_json(e):
    assert predict(e) == 0
    p = e.tmp / "elsewhere" / "custom.json"
    p.parent.mkdir()
    p.write_text(json.dumps({"labels": {"0": "background", "1": "meningioma"}, "training": []}))
    (e.labels / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "WRONG"}, "training": []}))
    e.extra["d"] = p
    return p


def eval_names_custom(e):
    return json.loads((e.out / "summary.json").read_text())["labels"]["1"] == "meningioma"  # not the sibling WRONG


def nii_beside_niigz(e):
    assert predict(e) == 0
    img = nib.load(e.out / "case0.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine), e.out / "case0.nii")
    return Path("case0.nii")


def eval_output_under_a_file(e):
    assert predict(e) == 0
    (e.tmp / "afile").write_text("x")
    e.extra["o"] = e.tmp / "afile" / "eval"
    return e.tmp / "afile" / "eval"


def eval_row(extra_key):
    def run(e, *args):
        from seg.cli.eval import main

        more = [] if extra_key not in e.extra else ["-d" if extra_key == "d" else "-o", str(e.extra[extra_key])]
        return main(["-p", str(e.out), "-l", str(e.labels), "--no-surface", *more, *args])

    return run


EVAL_ROWS = [
    ("eval-d-reads-the-file-given", custom_dataset_json, eval_row("d"), [], 0, None, eval_names_custom),
    ("eval-nii-beside-niigz", nii_beside_niigz, evaluate, [], 1, "case id 'case0' is given by 2 files",
     lambda e: "case0" not in [c.get("reference_file", "").split("/")[-1][:5]
                               for c in json.loads((e.out / "summary.json").read_text())["metric_per_case"]]),
    ("eval-output-unwritable", eval_output_under_a_file, eval_row("o"), [], 2, "cannot be created",
     lambda e: not list(e.tmp.rglob("summary.json"))),
]  # fmt: skip


# -- seg-export --------------------------------------------------------------------------------------------
def onto_another_bundle(e):
    other = make_bundle(e.tmp / "other", folds=(0,))
    e.extra["before"] = (other / "model.yaml").read_text(), (other / "fold_0" / "weights.pt").read_bytes()
    e.extra["o"] = other
    return other


def other_unchanged(e):
    other, (yaml_text, weights) = e.extra["o"], e.extra["before"]
    return (other / "model.yaml").read_text() == yaml_text and (other / "fold_0" / "weights.pt").read_bytes() == weights


def read_only_bundle(e):
    import tempfile

    real = tempfile.NamedTemporaryFile
    fold = str(e.bundle / "fold_0")

    def refuse(*a, dir=None, **k):  # the bundle's folder refuses new files, as on a read-only mount
        if dir is not None and str(dir).startswith(fold):
            raise OSError(30, "Read-only file system")
        return real(*a, dir=dir, **k)

    e.extra["restore"] = real
    tempfile.NamedTemporaryFile = refuse
    e.extra["yaml"] = (e.bundle / "model.yaml").read_text()
    return e.bundle / "fold_0"


def nothing_exported(e):
    import tempfile

    tempfile.NamedTemporaryFile = e.extra["restore"]
    files = [p.name for p in e.bundle.rglob("*")]
    return (e.bundle / "model.yaml").read_text() == e.extra["yaml"] and not any(
        n.endswith(".onnx") or n.startswith(".seg_export") for n in files
    )


def export(e, *args):
    from seg.cli.export import main

    return main(["-m", str(e.bundle), *(["-o", str(e.extra["o"])] if "o" in e.extra else []), *args])


EXPORT_ROWS = [
    ("export-onto-another-bundle", onto_another_bundle, export, [], 2, "holds a model bundle already", other_unchanged),
    ("export-read-only-bundle", read_only_bundle, export, [], 2, "Read-only file system", nothing_exported),
]


# -- seg-synth -------------------------------------------------------------------------------------------------
def synth(e, *args):
    from seg.cli.synth import main

    return main(["-o", str(e.extra["ds"]), "-n", "2", "--shape", "32", "32", "32", *args])


def synth_under_a_file(e):
    (e.tmp / "afile").write_text("x")
    e.extra["ds"] = e.tmp / "afile" / "ds"
    return e.tmp / "afile" / "ds"


def synth_disk_full(e):
    import shutil as sh

    e.extra["ds"] = e.tmp / "ds"
    e.extra["restore"] = sh.disk_usage
    sh.disk_usage = lambda p: sh._ntuple_diskusage(10**9, 10**9 - 10**3, 10**3)  # 1 kB free
    return e.tmp / "ds"


def synth_wrote_nothing(e):
    import shutil as sh

    if "restore" in e.extra:
        sh.disk_usage = e.extra["restore"]
    return not (e.tmp / "ds").exists() and not (e.tmp / "afile").is_dir()


SYNTH_ROWS = [
    ("synth-output-under-a-file", synth_under_a_file, synth, [], 2, "cannot be created", synth_wrote_nothing),
    ("synth-disk-full", synth_disk_full, synth, [], 2, "MB free", synth_wrote_nothing),
]


@pytest.mark.parametrize(
    "name, setup, command, args, code, needle, after",
    PREDICT_ROWS + EVAL_ROWS + EXPORT_ROWS + SYNTH_ROWS,
    ids=[r[0] for r in PREDICT_ROWS + EVAL_ROWS + EXPORT_ROWS + SYNTH_ROWS],
)
def test_fault(env, capsys, caplog, name, setup, command, args, code, needle, after):
    named = setup(env)
    capsys.readouterr()
    caplog.clear()
    try:
        rc = command(env, *args)
    finally:
        out, err = capsys.readouterr()
    text = out + err + caplog.text
    assert rc == code, text
    assert "Traceback" not in text
    lines = [line for line in text.splitlines() if needle in line] if needle else []
    if needle is not None:
        assert lines, text
        if code != 0:  # the failure's line names the file (or folder) at fault
            assert any(named.name in line for line in lines), (named, lines)
    assert after(env), text
    _record(name, rc, next((x for x in lines if named.name in x), lines[0]) if lines else "(no message)", env.tmp)


# -- seg-plan, seg-train, seg-check-data: commands in a subprocess (their own argv) ---------------------------------
def _run(module: str, *args: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=REPO, env=environ, timeout=300
    )


def _truncated_case(ds: Path) -> Path:
    p = ds / "imagesTr" / "synth_003.nii.gz"
    p.write_bytes(p.read_bytes()[:400])
    return p


def _outside_entry(ds: Path, path: str) -> Path:
    meta = json.loads((ds / "dataset.json").read_text())
    meta["training"][0]["image"] = path
    (ds / "dataset.json").write_text(json.dumps(meta))
    return ds / "dataset.json"


PLAN_ROWS = [
    ("plan-budget-0", lambda ds, t: (Path("--budget"), ["--budget", "0"]), "--budget"),
    ("plan-budget-0.001", lambda ds, t: (Path("--budget"), ["--budget", "0.001"]), "--budget"),
    ("plan-budget-30s", lambda ds, t: (Path("--budget"), ["--budget", "30s"]), "at least 60 s"),
    ("plan-memory-gb-0", lambda ds, t: (Path("--memory-gb"), ["--memory-gb", "0"]), "--memory-gb"),
    ("plan-truncated-image", lambda ds, t: (_truncated_case(ds), []), "truncated"),
    ("plan-entry-outside-root", lambda ds, t: (_outside_entry(ds, "../elsewhere/x.nii.gz"), []), "outside"),
]


@pytest.mark.parametrize("name, setup, needle", PLAN_ROWS, ids=[r[0] for r in PLAN_ROWS])
def test_plan_fault(synth_copy, tmp_path, capsys, name, setup, needle):
    from seg.cli.plan import main

    named, args = setup(synth_copy, tmp_path)
    plan = tmp_path / "p.yaml"
    rc = main([str(synth_copy), *args, "-o", str(plan), "-q"])
    err = capsys.readouterr().err
    assert rc == ExitCode.REFUSED, err[-2000:]
    lines = [x for x in err.splitlines() if needle in x]
    assert lines and any(named.name in x for x in lines) and "Traceback" not in err, err[-2000:]
    assert not plan.exists() and not (tmp_path / "p.fingerprint.json").exists()  # refused before any work
    _record(name, rc, lines[0], tmp_path)


def test_plan_for_a_path_with_hash_trains_that_folder(synth_root, tmp_path, monkeypatch):
    """A dataset at 'my #data' (a YAML comment marker after a space): the plan names that very folder."""
    from hydra import compose, initialize_config_dir

    from seg.cli.args import plan_overrides
    from seg.config import CONF_DIR
    from seg.plan.planfile import plan_yaml
    from seg.plan.planner import make_plan
    from tests.plan.conftest import modelled

    ds = tmp_path / "my #data: x"
    shutil.copytree(synth_root, ds)
    path = tmp_path / "p.yaml"
    plan = make_plan(ds, budget="2m", device="cpu", instruments=modelled(), cache=tmp_path / "fp.json", progress=False)
    path.write_text(plan_yaml(plan, "x"))
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose("train", overrides=plan_overrides([f"plan={path}", f"paths.output_dir={tmp_path}"]))
    assert cfg.data.root == str(ds) and cfg.planned.dataset == str(ds)


def test_plan_file_that_is_not_yaml_is_one_line(synth_root, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n  root: x\n")
    r = _run("seg.cli.train", f"plan={bad}", f"hydra.run.dir={tmp_path / 'r'}")
    assert r.returncode == ExitCode.REFUSED and "Traceback" not in r.stderr
    assert "bad.yaml: plan file is not valid YAML at line" in r.stderr and not (tmp_path / "r").exists()
    _record("train-plan-not-yaml", r.returncode, r.stderr.strip().splitlines()[0], tmp_path)


@pytest.mark.parametrize(
    "entry", ["../outside/x.nii.gz", "/etc/x.nii.gz"], ids=["check-data-entry-dotdot", "check-data-entry-absolute"]
)
def test_entries_outside_the_dataset_are_refused_unless_allowed(synth_copy, tmp_path, entry):
    from seg.cli.check_data import main

    named = _outside_entry(synth_copy, entry)
    before = named.read_bytes()
    assert main([str(synth_copy)]) == ExitCode.REFUSED
    with pytest.raises(Exception, match="points outside the dataset folder"):
        from seg.run.train import train

        train(compose_train([f"data.root={synth_copy}", *TINY, "trainer.max_epochs=1"], tmp_path / "r"))
    assert named.read_bytes() == before and not (tmp_path / "r" / "checkpoints").exists()
    # allowed explicitly: read (and then reported as the missing file it is)
    assert main([str(synth_copy), "--allow-outside-root"]) == ExitCode.FAILED


TRAIN_ROWS = [
    ("trainer-max-time-20m-accepted", ["trainer.max_time=20m"], None),
    ("trainer-max-time-soon", ["trainer.max_time=soon"], "trainer.max_time 'soon'"),
    ("trainer-precision-fp16x", ["trainer.precision=fp16x"], "trainer.precision='fp16x'"),
    ("model-net-filters-one-level", ["model.net.filters=[4]"], "model.net"),
]


@pytest.mark.parametrize("name, extra, needle", TRAIN_ROWS, ids=[r[0] for r in TRAIN_ROWS])
def test_train_config_vocabulary_and_errors(synth_root, tmp_path, name, extra, needle):
    from seg.errors import SegError
    from seg.run.checks import validate_config
    from seg.run.train import train

    cfg = compose_train([f"data.root={synth_root}", *TINY, "trainer.max_epochs=1", *extra], tmp_path / "r")
    if needle is None:
        validate_config(cfg)  # the same vocabulary as --budget
        return
    with pytest.raises(SegError) as exc:
        train(cfg)
    first = str(exc.value).splitlines()[0]
    assert needle in first and "\n" not in first
    assert not (tmp_path / "r" / "checkpoints").exists()
    _record(name, 2, first, tmp_path)
