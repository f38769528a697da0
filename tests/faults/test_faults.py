"""Faults as a user meets them: one table, one row per bad input or fault.

Each row: what is broken (a ``setup`` that breaks a fresh copy of a working set-up), the command run on
it, the exit code, a file the one-line message must name (and text it must hold), and what must or must
not exist afterwards. Commands run in-process through their ``main`` (what the console scripts call),
so an uncaught exception fails the row instead of reaching a user as a traceback.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.conftest import TINY, compose_train
from tests.inference.conftest import make_bundle


@dataclass
class Env:
    tmp: Path
    bundle: Path
    inp: Path  # a folder of 3 good single-channel cases
    out: Path
    labels: Path  # references of the 3 cases
    extra: dict = field(default_factory=dict)


def _img(path, data, affine=None, zooms=None):
    img = nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine)
    if zooms is not None:
        img.header.set_zooms(zooms)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)
    return path


@pytest.fixture
def env(synth_root, tmp_path):
    bundle = make_bundle(tmp_path / "model", folds=(0,))
    inp, labels = tmp_path / "in", tmp_path / "ref"
    inp.mkdir()
    labels.mkdir()
    for i in range(3):
        shutil.copy(synth_root / "imagesTr" / f"synth_00{i}.nii.gz", inp / f"case{i}.nii.gz")
        shutil.copy(synth_root / "labelsTr" / f"synth_00{i}.nii.gz", labels / f"case{i}.nii.gz")
    return Env(tmp_path, bundle, inp, tmp_path / "out", labels)


def predict(e: Env, *extra):
    from seg.cli.predict import main

    return main(
        ["-i", str(e.extra.get("i", e.inp)), "-o", str(e.extra.get("o", e.out)), "-m", str(e.bundle), "-q", *extra]
    )


def evaluate(e: Env, *extra):
    from seg.cli.eval import main

    return main(["-p", str(e.out), "-l", str(e.labels), "--no-surface", *extra])


def synth(e: Env, *extra):
    from seg.cli.synth import main

    return main(["-o", str(e.extra.get("ds", e.tmp / "ds")), "-n", "2", "--shape", "32", "32", "32", *extra])


def good_predictions(e: Env):
    assert predict(e) == 0


# -- the faults ------------------------------------------------------------------------------------------
def empty_weights(e):
    (e.bundle / "fold_0" / "weights.pt").write_bytes(b"")
    return e.bundle / "fold_0" / "weights.pt"


def random_weights(e):
    (e.bundle / "fold_0" / "weights.pt").write_bytes(os.urandom(2048))
    return e.bundle / "fold_0" / "weights.pt"


def bundle_without_net(e):
    import yaml

    p = e.bundle / "model.yaml"
    meta = yaml.safe_load(p.read_text())
    meta.pop("net")
    p.write_text(yaml.safe_dump(meta))
    return p


def bundle_not_yaml(e):
    (e.bundle / "model.yaml").write_text("format: [unclosed\n")
    return e.bundle / "model.yaml"


def bundle_missing(e):
    (e.bundle / "model.yaml").unlink()
    return e.bundle / "model.yaml"


def other_architecture(e):
    from seg.nn import create_net

    net = create_net("daunet", spatial_dims=3, in_channels=1, out_channels=2, filters=[4, 8, 8])
    torch.save(net.state_dict(), e.bundle / "fold_0" / "weights.pt")
    return e.bundle / "fold_0" / "weights.pt"


def mha_input(e):
    p = e.tmp / "scan.mha"
    p.write_bytes(b"ObjectType = Image\nNDims = 3\n")
    e.extra["i"] = p
    return p


def nrrd_in_folder(e):
    p = e.inp / "extra.nrrd"
    p.write_bytes(b"NRRD0004\n")
    return p


def output_is_file(e):
    e.out.write_text("x")
    return e.out


def output_parent_is_file(e):
    (e.tmp / "afile").write_text("x")
    e.extra["o"] = e.tmp / "afile" / "out"
    return e.tmp / "afile" / "out"


def existing_masks(e):
    good_predictions(e)
    e.extra["mtime"] = (e.out / "case0.nii.gz").stat().st_mtime_ns
    os.utime(e.out / "case0.nii.gz", ns=(1, 1))
    return e.out


def one_existing_mask(e):
    good_predictions(e)
    for name in ("case1.nii.gz", "case2.nii.gz", "summary.csv"):
        (e.out / name).unlink()
    os.utime(e.out / "case0.nii.gz", ns=(1, 1))
    return e.out


def duplicate_ids(e):
    img = nib.load(e.inp / "case0.nii.gz")
    nib.save(img, e.inp / "case0.nii")
    return e.inp / "case0.nii"


def hidden_temporary(e):
    shutil.copy(e.inp / "case0.nii.gz", e.inp / ".case9.nii.gz.abc123.part.nii.gz")
    return e.inp / ".case9.nii.gz.abc123.part.nii.gz"


def all_zero(e):
    return _img(e.inp / "case0.nii.gz", np.zeros((32, 32, 32), np.float32))


def thin_volume(e):
    return _img(e.inp / "case0.nii.gz", np.random.default_rng(0).normal(size=(32, 32, 1)).astype(np.float32))


def huge_spacing(e):
    return _img(
        e.inp / "case0.nii.gz",
        np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32),
        np.diag([50.0, 50.0, 50.0, 1.0]),
    )


def singular_affine(e):
    # nibabel cannot derive a qform from a singular matrix: write it as the sform only, as a broken header has it
    a = np.diag([2.0, 2.0, 2.0, 1.0])
    a[2, :3] = a[0, :3]
    img = nib.Nifti1Image(np.ones((16, 16, 16), np.float32), np.eye(4))
    img.header.set_qform(None, code=0)
    img.header.set_sform(a, code=1)
    p = e.inp / "case0.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((16, 16, 16), np.float32), None, img.header), p)
    assert abs(np.linalg.det(nib.load(p).affine[:3, :3])) < 1e-9
    return p


def truncated_input(e):
    p = e.inp / "case0.nii.gz"
    p.write_bytes(p.read_bytes()[:300])
    return p


def nan_input(e):
    d = np.ones((16, 16, 16), np.float32)
    d[3, 3, 3] = np.nan
    return _img(e.inp / "case0.nii.gz", d)


def missing_input(e):
    e.extra["i"] = e.tmp / "nowhere"
    return e.tmp / "nowhere"


def folder_digest(folder: Path) -> dict:
    return {f.name: f.read_bytes() for f in sorted(folder.iterdir()) if f.is_file()}


def output_is_input(e):
    e.extra["o"] = e.inp
    e.extra["before"] = folder_digest(e.inp)
    return e.inp


def inputs_untouched(e):
    return folder_digest(e.inp) == e.extra["before"]


def wrong_grid_prediction(e):
    good_predictions(e)
    p = e.out / "case1.nii.gz"
    img = nib.load(p)
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine * 1.5), p)
    return p


def missing_prediction(e):
    good_predictions(e)
    (e.out / "case2.nii.gz").unlink()
    return Path("case2")  # named by its case id


def undeclared_label(e):
    good_predictions(e)
    p = e.out / "case0.nii.gz"
    img = nib.load(p)
    d = np.asanyarray(img.dataobj).copy()
    d[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(d, img.affine, img.header), p)
    return p


def truncated_prediction(e):
    good_predictions(e)
    p = e.out / "case1.nii.gz"
    p.write_bytes(gzip.compress(p.read_bytes()[:10])[:40])
    return p


def existing_dataset(e):
    ds = e.tmp / "ds"
    assert synth(e) == 0
    e.extra["before"] = (ds / "dataset.json").read_bytes()
    return ds


# rows: (id, setup, command, extra args, exit code, needle in the message, what must hold afterwards)
def no_masks(e):
    return not e.out.exists() or not list(e.out.glob("case*.nii.gz"))


def masks_of_good(e):
    return (e.out / "case1.nii.gz").exists() and (e.out / "case2.nii.gz").exists()


ROWS = [
    ("weights-empty", empty_weights, predict, [], 2, "empty", no_masks),
    ("weights-random", random_weights, predict, [], 2, "not a readable weights file", no_masks),
    ("bundle-without-net", bundle_without_net, predict, [], 2, "net missing", no_masks),
    ("bundle-not-yaml", bundle_not_yaml, predict, [], 2, "not valid YAML", no_masks),
    ("bundle-missing", bundle_missing, predict, [], 2, "model.yaml missing", no_masks),
    ("weights-other-architecture", other_architecture, predict, [], 2, "do not fit", no_masks),
    ("input-mha-file", mha_input, predict, [], 2, "not a NIfTI file", no_masks),
    ("input-nrrd-in-folder", nrrd_in_folder, predict, [], 1, "not NIfTI", masks_of_good),
    ("output-is-a-file", output_is_file, predict, [], 2, "not a folder", lambda e: e.out.read_text() == "x"),
    (
        "output-parent-is-a-file",
        output_parent_is_file,
        predict,
        [],
        2,
        "cannot be created",
        lambda e: (e.tmp / "afile").read_text() == "x",
    ),
    (
        "masks-exist",
        existing_masks,
        predict,
        [],
        2,
        "--overwrite",
        lambda e: (e.out / "case0.nii.gz").stat().st_mtime_ns == 1,
    ),
    (
        "masks-exist-overwrite",
        existing_masks,
        predict,
        ["--overwrite"],
        0,
        None,
        lambda e: (e.out / "case0.nii.gz").stat().st_mtime_ns != 1,
    ),
    (
        "masks-exist-continue",
        one_existing_mask,
        predict,
        ["--continue"],
        0,
        None,
        lambda e: (e.out / "case0.nii.gz").stat().st_mtime_ns == 1 and masks_of_good(e),
    ),
    (
        "duplicate-case-ids",
        duplicate_ids,
        predict,
        [],
        1,
        "case id 'case0'",
        lambda e: not (e.out / "case0.nii.gz").exists() and not (e.out / "case0.nii").exists() and masks_of_good(e),
    ),
    ("folds-empty", lambda e: Path("--folds"), predict, ["--folds", ","], 2, "--folds", no_masks),
    ("folds-unknown", lambda e: e.bundle / "model.yaml", predict, ["--folds", "7"], 2, "folds [7]", no_masks),
    ("overlap-out-of-range", lambda e: Path("overlap"), predict, ["--overlap", "1.5"], 2, "overlap", no_masks),
    (
        "own-temporary-ignored",
        hidden_temporary,
        predict,
        [],
        0,
        None,
        lambda e: masks_of_good(e) and not list(e.out.glob("*case9*")),
    ),
    ("all-zero-volume", all_zero, predict, [], 0, "constant", lambda e: (e.out / "case0.nii.gz").exists()),
    ("one-voxel-thick", thin_volume, predict, [], 0, "fewer than 4", lambda e: (e.out / "case0.nii.gz").exists()),
    ("spacing-50mm", huge_spacing, predict, [], 0, "outside", lambda e: (e.out / "case0.nii.gz").exists()),
    ("singular-affine", singular_affine, predict, [], 1, "singular", masks_of_good),
    ("truncated-input", truncated_input, predict, [], 1, "truncated", masks_of_good),
    ("nan-input", nan_input, predict, [], 1, "NaN", masks_of_good),
    ("input-missing", missing_input, predict, [], 2, "does not exist", no_masks),
    ("output-is-input", output_is_input, predict, [], 2, "never overwritten", inputs_untouched),
    (
        "eval-wrong-grid",
        wrong_grid_prediction,
        evaluate,
        [],
        1,
        "affine differs",
        lambda e: len(json.loads((e.out / "summary.json").read_text())["metric_per_case"]) == 2,
    ),
    (
        "eval-missing",
        missing_prediction,
        evaluate,
        [],
        1,
        "MISSING",
        lambda e: json.loads((e.out / "summary.json").read_text())["missing_cases"] == ["case2"],
    ),
    (
        "eval-missing-allowed",
        missing_prediction,
        evaluate,
        ["--allow-missing"],
        0,
        "MISSING",
        lambda e: (e.out / "summary.json").exists(),
    ),
    (
        "eval-undeclared-label",
        undeclared_label,
        evaluate,
        [],
        0,
        "[7]",
        lambda e: json.loads((e.out / "summary.json").read_text())["undeclared_labels"] == {"case0": [7]},
    ),
    (
        "eval-truncated-prediction",
        truncated_prediction,
        evaluate,
        [],
        1,
        "case1",
        lambda e: len(json.loads((e.out / "summary.json").read_text())["metric_per_case"]) == 2,
    ),
    (
        "synth-existing-dataset",
        existing_dataset,
        synth,
        [],
        2,
        "holds a dataset already",
        lambda e: (e.tmp / "ds" / "dataset.json").read_bytes() == e.extra["before"],
    ),
    (
        "synth-zero-shape",
        lambda e: Path("--shape"),
        lambda e: __import__("seg.cli.synth", fromlist=["main"]).main(
            ["-o", str(e.tmp / "ds"), "--shape", "0", "32", "32"]
        ),
        [],
        2,
        "--shape",
        lambda e: not (e.tmp / "ds").exists(),
    ),
]


def _record(name: str, rc: int, line: str, tmp: Path) -> None:
    """With SEG_FAULTS_REPORT=FILE, append what the row printed (for the README's and notes' case list)."""
    report = os.environ.get("SEG_FAULTS_REPORT")
    if report:
        with open(report, "a") as f:
            line = re.sub(r"^(WARNING|ERROR) +\S+:\S+:\d+ ", r"\1 ", line.replace(str(tmp), "<tmp>").strip())
            f.write(f"| {name} | {rc} | `{line[:220]}` |\n")


@pytest.mark.parametrize("name, setup, command, args, code, needle, after", ROWS, ids=[r[0] for r in ROWS])
def test_fault(env, capsys, caplog, name, setup, command, args, code, needle, after):
    named = setup(env)
    capsys.readouterr()
    caplog.clear()
    rc = command(env, *args)
    out, err = capsys.readouterr()
    text = out + err + caplog.text  # printed lines and the one-line log records (warnings, per-case errors)
    assert rc == code, text
    assert "Traceback" not in text
    if needle is not None:
        lines = [line for line in text.splitlines() if needle in line]
        assert lines, text
        # the failure's (or the warning's) line names the file (or folder) at fault
        assert any(named.name in line for line in lines), (named, lines)
    assert after(env), text
    shown = next((x for x in lines if named.name in x), lines[0]) if needle is not None else "(no message expected)"
    _record(name, rc, shown, env.tmp)


# -- seg-train / seg-kfold: the runner raises a user error the Hydra wrapper prints as lines, exit 1 ----
def _edit_json(ds, fn):
    meta = json.loads((ds / "dataset.json").read_text())
    fn(meta)
    (ds / "dataset.json").write_text(json.dumps(meta))
    return ds / "dataset.json"


def entry_without_label(ds, tmp):
    return _edit_json(ds, lambda m: m["training"][1].pop("label")), []


def channel_key_not_integer(ds, tmp):
    return _edit_json(ds, lambda m: m.update(modality={"T1": "T1"})), []


def data_root_typo(ds, tmp):
    return tmp / "typo", [f"data.root={tmp / 'typo'}", "data=synthetic"]


def max_epochs_abc(ds, tmp):
    return Path("trainer.max_epochs"), ["trainer.max_epochs=abc"]


def unknown_trainer_key(ds, tmp):
    return Path("trainer.max_epoch"), ["++trainer.max_epoch=3"]


def corrupt_ckpt(ds, tmp):
    p = tmp / "last.ckpt"
    p.write_bytes(os.urandom(1000))
    return p, [f"ckpt_path={p}"]


def more_folds_than_cases(ds, tmp):
    named = shutil.copytree(ds, tmp / "EightCases")  # a name the message can only hold by naming the dataset
    return named, [f"data.root={named}", "data.num_folds=9"]


TRAIN_ROWS = [
    ("dataset-entry-without-label", entry_without_label, "needs 'image' and 'label'"),
    ("dataset-channel-key-not-integer", channel_key_not_integer, "is not a channel number"),
    ("data-root-typo-not-filled", data_root_typo, "no dataset.json there"),
    ("trainer-max-epochs-abc", max_epochs_abc, "expected"),
    ("trainer-unknown-key", unknown_trainer_key, "did you mean trainer.max_epochs"),
    ("ckpt-path-corrupt", corrupt_ckpt, "not a readable seg checkpoint"),
    ("more-folds-than-cases", more_folds_than_cases, "set data.num_folds"),
    ("fold-out-of-range", lambda ds, tmp: (Path("splits.json"), ["data.fold=5"]), "data.fold=5"),
    ("data-batch-size-0", lambda ds, tmp: (Path("data.batch_size"), ["data.batch_size=0"]), "give 1 or more"),
    ("data-patch-axis-0", lambda ds, tmp: (Path("data.patch_size"), ["data.patch_size=[24,0,24]"]), "1 voxel or more"),
]


@pytest.mark.parametrize("name, setup, needle", TRAIN_ROWS, ids=[r[0] for r in TRAIN_ROWS])
def test_training_fault(synth_copy, tmp_path, name, setup, needle):
    from seg.errors import SegError
    from seg.run.train import train

    named, extra = setup(synth_copy, tmp_path)
    cfg = compose_train([f"data.root={synth_copy}", *TINY, "trainer.max_epochs=1", *extra], tmp_path / "run")
    with pytest.raises(SegError) as exc:
        train(cfg)
    lines = [line for line in str(exc.value).splitlines() if needle in line]
    assert lines and any(str(named.name) in line for line in lines), str(exc.value)
    _record(name, 2, f"error: {lines[0]}", tmp_path)  # what seg-train prints, and its exit (refused)
    assert not (tmp_path / "run" / "checkpoints").exists()  # stopped before any training
    if name == "data-root-typo-not-filled":
        assert not (tmp_path / "typo").exists()  # nothing generated into a mistyped folder
