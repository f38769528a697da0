"""Faults, round three (#40): any file a command reads is data, any cache knows its inputs, no command writes
where it reads or through a planted link. Rows as in round two: what is broken, the command, the exit code,
the one line (naming the file at fault) and what holds afterwards. Rows recorded with SEG_FAULTS_REPORT.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
from pathlib import Path

import pytest
import yaml

from seg.errors import ExitCode
from tests.conftest import REPO
from tests.faults.test_faults import Env, _record, env, predict  # noqa: F401  (env: the fixture)
from tests.faults.test_faults_round2 import _run


# -- any file a command reads is data: a hostile plan (R1) -------------------------------------------------
def _plan(tmp: Path, **top) -> Path:
    """The committed planned experiment with ``top`` merged over it (a plan as seg-plan writes it)."""
    plan = yaml.safe_load((REPO / "conf" / "experiment" / "hippocampus_planned.yaml").read_text())
    for k, v in top.items():
        plan[k] = {**plan.get(k, {}), **v} if isinstance(v, dict) and isinstance(plan.get(k), dict) else v
    path = tmp / "hostile.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


def _write_text_target(tmp: Path) -> dict:
    return {"optimizer": {"_target_": "pathlib.Path.write_text", "self": str(tmp / "planted.txt"), "data": "x"}}


HOSTILE_PLANS = [
    ("plan-target-writes-a-file", lambda t: {"model": _write_text_target(t)}, "model.optimizer._target_"),
    ("plan-partial-key", lambda t: {"data": {"_partial_": True}}, "data._partial_"),
    ("plan-callback-with-target", lambda t: {"callbacks": {"x": {"_target_": "os.system"}}}, "callbacks.x._target_"),
    ("plan-callback-turned-on", lambda t: {"callbacks": {"early_stopping": {"patience": 1}}}, "only turn a callback"),
    ("plan-hydra-key", lambda t: {"hydra": {"run": {"dir": str(t / "elsewhere")}}}, "hydra: not a key of a plan"),
    ("plan-defaults-foreign", lambda t: {"defaults": [{"override /data": "../../x"}]}, "not one of seg's configs"),
    ("plan-not-a-mapping", None, "not a plan"),
]


def _hostile(tmp_path, top) -> Path:
    if top is None:
        plan = tmp_path / "hostile.yaml"
        plan.write_text("- a\n- list\n")
        return plan
    return _plan(tmp_path, **top(tmp_path))


@pytest.mark.parametrize("name, top, needle", HOSTILE_PLANS, ids=[r[0] for r in HOSTILE_PLANS])
def test_a_plan_file_is_data(tmp_path, name, top, needle):
    """The rule as seg-train applies it before composing (the command's own path, in-process); the first row
    also end to end below."""
    from seg.cli.args import plan_overrides
    from seg.config import UserError

    plan = _hostile(tmp_path, top)
    with pytest.raises(UserError) as e:
        plan_overrides([f"plan={plan}", "trainer.max_epochs=1"])
    line = str(e.value)
    assert len(line.splitlines()) == 1 and needle in line and "hostile.yaml" in line, line
    _record(name, ExitCode.REFUSED, f"error: {line}", tmp_path)


def test_a_hostile_plan_runs_no_code_end_to_end(tmp_path):
    plan = _hostile(tmp_path, HOSTILE_PLANS[0][1])
    r = _run("seg.cli.train", f"plan={plan}", f"hydra.run.dir={tmp_path / 'run'}", "trainer.max_epochs=1")
    lines = [x for x in r.stderr.splitlines() if "model.optimizer._target_" in x]
    assert r.returncode == ExitCode.REFUSED and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert lines and "hostile.yaml" in lines[0], r.stderr[-3000:]
    assert not (tmp_path / "planted.txt").exists() and not (tmp_path / "run").exists()


def test_the_committed_plans_pass_the_plan_rule():
    from seg.config import check_plan_file

    for path in sorted((REPO / "conf" / "experiment").glob("*planned*.yaml")):
        check_plan_file(yaml.safe_load(path.read_text()), path)


def test_a_plan_is_composed_from_a_private_copy_not_a_predictable_folder(tmp_path, monkeypatch):
    """R7: the folder Hydra searches is made by mkdtemp (0700, a new name each run), and holds a copy: a link
    planted where the old predictable folder was is neither followed nor deleted through."""
    import hashlib
    import tempfile

    from seg.cli.args import plan_overrides

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    plan = _plan(tmp_path)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "hostile.yaml").write_text("keep me")
    old = tmp_path / "tmp" / f"seg_plan_{hashlib.sha256(str(plan).encode()).hexdigest()[:12]}"
    old.mkdir()
    (old / "experiment").symlink_to(victim)
    first, second = (plan_overrides([f"plan={plan}"])[0] for _ in range(2))
    assert (victim / "hostile.yaml").read_text() == "keep me"
    folders = [Path(x.split("file://", 1)[1].rstrip("]")) for x in (first, second)]
    assert folders[0] != folders[1] and all(f != old for f in folders)
    for f in folders:
        assert stat.S_IMODE(f.stat().st_mode) == 0o700
        copy = f / "experiment" / "hostile.yaml"
        assert not copy.is_symlink() and copy.read_text() == plan.read_text()


# -- no command writes where it reads: seg-plan's outputs (R2, R13) ---------------------------------------
def _o_dataset_json(ds, t):
    return ds / "dataset.json", ["-o", str(ds / "dataset.json")]


def _fingerprint_dataset_json(ds, t):
    return ds / "dataset.json", ["--fingerprint", str(ds / "dataset.json")]


def _o_not_a_plan(ds, t):
    notes = t / "notes.yaml"
    notes.write_text("my: notes\n")
    return notes, ["-o", str(notes)]


def _fingerprint_misnamed(ds, t):
    return t / "fp.json", ["--fingerprint", str(t / "fp.json")]


def _o_under_a_file(ds, t):
    (t / "afile").write_text("x")
    return t / "afile", ["-o", str(t / "afile" / "p.yaml")]


PLAN_OUTPUT_ROWS = [
    ("plan-o-dataset-json", _o_dataset_json, "inside the dataset folder"),
    ("plan-fingerprint-dataset-json", _fingerprint_dataset_json, "inside the dataset folder"),
    ("plan-o-replaces-a-non-plan", _o_not_a_plan, "is not a plan seg-plan wrote"),
    ("plan-fingerprint-not-a-fingerprint-name", _fingerprint_misnamed, "*.fingerprint.json"),
    ("plan-o-under-a-file", _o_under_a_file, "not a folder"),
]


@pytest.mark.parametrize("name, setup, needle", PLAN_OUTPUT_ROWS, ids=[r[0] for r in PLAN_OUTPUT_ROWS])
def test_plan_outputs_are_checked_before_any_probe(synth_copy, tmp_path, capsys, monkeypatch, name, setup, needle):
    from seg.cli.plan import main
    from seg.plan import planner

    monkeypatch.setattr(planner.Planner, "plan", lambda self: pytest.fail("probed before the outputs were checked"))
    named, args = setup(synth_copy, tmp_path)
    before = {p: p.read_bytes() for p in [*synth_copy.rglob("*"), *tmp_path.glob("*")] if p.is_file()}
    rc = main([str(synth_copy), *args, "-q"])
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if needle in x]
    assert rc == ExitCode.REFUSED and "Traceback" not in err, err[-2000:]
    assert lines and named.name in lines[0], err[-2000:]
    assert {p: p.read_bytes() for p in before} == before  # nothing replaced
    _record(name, rc, lines[0], tmp_path)


def test_plan_o_replaces_its_own_earlier_plan(synth_copy, tmp_path, monkeypatch):
    """The rule's other side: a file that is a plan (``planned:``) may be replaced by -o."""
    from seg.plan.planfile import check_outputs

    earlier = tmp_path / "p.yaml"
    earlier.write_text("planned: {dataset: x}\ndata: {}\n")
    check_outputs(synth_copy, earlier, tmp_path / "p.fingerprint.json")  # no refusal


# -- caches know their inputs: a garbage fingerprint cache (R15) ------------------------------------------
@pytest.mark.parametrize(
    "garbage", ["[1, 2]", '{"key": 5}', "not json", "\udcff"], ids=["list", "no-cases", "text", "bytes"]
)
def test_a_garbage_fingerprint_cache_is_computed_again_with_one_warning(synth_root, tmp_path, caplog, garbage):
    from seg.data.datalist import load_dataset
    from seg.plan.fingerprint import compute_fingerprint

    cache = tmp_path / "x.fingerprint.json"
    cache.write_bytes(garbage.encode("utf-8", "surrogateescape"))
    with caplog.at_level(logging.WARNING):
        fp = compute_fingerprint(load_dataset(synth_root), cache, workers=1, progress=False)
    assert len(fp["cases"]) == 8 and json.loads(cache.read_text())["key"] == fp["key"]
    warned = [r.getMessage() for r in caplog.records if "unreadable fingerprint cache" in r.getMessage()]
    assert len(warned) == 1 and cache.name in warned[0]


# -- locks are never followed (R6) ------------------------------------------------------------------------
def test_a_planted_lock_link_is_refused_and_its_target_kept(env, capsys):  # noqa: F811
    victim = env.tmp / "victim.txt"
    victim.write_text("keep me")
    env.out.mkdir()
    (env.out / ".seg-predict.lock").symlink_to(victim)
    rc = predict(env)
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if "symbolic link" in x]
    assert rc == ExitCode.REFUSED and lines and ".seg-predict.lock" in lines[0], err
    assert victim.read_text() == "keep me" and not list(env.out.glob("*.nii.gz"))
    _record("predict-lock-is-a-planted-link", rc, lines[0], env.tmp)
    assert os.path.islink(env.out / ".seg-predict.lock")  # left for the user to look at, not removed


# -- GPU requests on a machine without one (R20, #41) -----------------------------------------------------
@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_a_gpu_request_without_a_gpu_is_one_line(synth_root, tmp_path, capsys):
    r = _run("seg.cli.train", f"data.root={synth_root}", "trainer.accelerator=cuda", f"hydra.run.dir={tmp_path / 'r'}")
    lines = [x for x in r.stderr.splitlines() if "trainer.accelerator=cuda" in x]
    assert r.returncode == ExitCode.REFUSED and "Traceback" not in r.stderr and "Misconfiguration" not in r.stderr
    assert lines and "no CUDA device on this machine" in lines[0], r.stderr[-2000:]
    assert r.stderr.strip() == f"error: {lines[0].removeprefix('error: ')}"  # one line, nothing after it
    assert not (tmp_path / "r").exists()  # a refused run leaves no run folder (#41)
    _record("train-accelerator-cuda-without-gpu", r.returncode, lines[0], tmp_path)
    from seg.cli.plan import main

    assert main([str(synth_root), "--device", "cuda", "--budget", "2m", "-o", str(tmp_path / "p.yaml"), "-q"]) == 0
    out = capsys.readouterr().out
    assert f"next (on a machine with CUDA): seg-train plan={tmp_path / 'p.yaml'}" in out  # not a command for here


# -- a second channel file is no second patient (R9, #41) -------------------------------------------------
def test_a_second_channel_file_for_a_one_channel_model_is_named(env, capsys):  # noqa: F811
    shutil.copy(env.inp / "case1.nii.gz", env.inp / "x_0000.nii.gz")
    shutil.copy(env.inp / "case2.nii.gz", env.inp / "x_0001.nii.gz")
    rc = predict(env)
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if "x_0001" in x]
    assert rc == ExitCode.FAILED and lines, err
    assert "unexpected channel file(s) x_0001: the model takes 1 channel" in lines[0]
    assert not (env.out / "x_0001.nii.gz").exists() and not (env.out / "x.nii.gz").exists()
    assert len(list(env.out.glob("case*.nii.gz"))) == 3  # the batch goes on
    _record("predict-second-channel-for-a-one-channel-model", rc, lines[0], env.tmp)


# -- seg-eval never scores or writes the references as predictions (D21) ----------------------------------
@pytest.mark.parametrize("where", ["pred", "output"])
def test_eval_refuses_the_references_as_predictions_or_output(env, capsys, where):  # noqa: F811
    from seg.cli.eval import main

    before = {p.name: p.read_bytes() for p in env.labels.iterdir()}
    pred = env.labels if where == "pred" else env.inp
    rc = main(["-p", str(pred), "-l", str(env.labels), "-o", str(env.labels), "--no-surface"])
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if str(env.labels.resolve()) in x]
    assert rc == ExitCode.REFUSED and lines and "Traceback" not in err, err
    assert {p.name: p.read_bytes() for p in env.labels.iterdir()} == before  # no summary.json among them
    _record(f"eval-references-as-{where}", rc, lines[0], env.tmp)


# -- an earlier run's mask never stands for a case that now fails (R5) -------------------------------------
def test_overwrite_removes_the_mask_of_a_case_that_now_fails(env, capsys):  # noqa: F811
    assert predict(env) == 0
    (env.inp / "case1.nii.gz").write_bytes(b"not a volume any more")
    capsys.readouterr()
    rc = predict(env, "--overwrite")
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("FAILED case1") and "earlier case1.nii.gz removed" in x]
    assert rc == ExitCode.FAILED and lines, err
    assert not (env.out / "case1.nii.gz").exists() and (env.out / "case0.nii.gz").exists()
    _record("predict-overwrite-case-now-fails", rc, lines[0], env.tmp)
    assert predict(env, "--continue") == ExitCode.FAILED  # case1 tried again and named, not taken as done
    assert "FAILED case1" in capsys.readouterr().err


# -- one training per run folder (R8) ---------------------------------------------------------------------
def test_a_second_training_into_a_busy_run_folder_stops_at_once(synth_root, tmp_path):
    """The folder held as a running seg-train holds it (its lock, taken here): seg-train into it stops at once."""
    from seg.io import FolderLock
    from tests.conftest import TINY

    run = tmp_path / "run"
    args = [f"data.root={synth_root}", *TINY, "trainer.max_epochs=1", f"hydra.run.dir={run}"]
    with FolderLock(run, "seg-train"):
        r = _run("seg.cli.train", *args)
    lines = [x for x in r.stderr.splitlines() if "in use by pid" in x]
    assert r.returncode == ExitCode.REFUSED and lines and str(run) in lines[0], r.stderr[-2000:]
    assert not (run / "checkpoints").exists() and not (run / "metrics.json").exists()
    _record("train-second-run-into-a-busy-folder", r.returncode, lines[0], tmp_path)


# -- seg-eval scores label maps only (R10) ------------------------------------------------------------------
def _ref_nan(e):
    a = nib_data(e.labels / "case1.nii.gz").astype("float32")
    a[0, 0, 0] = float("nan")
    return _save_like(e.labels / "case1.nii.gz", a), "NaN or infinite"


def _ref_is_an_image(e):  # an integer image (a CT's HU, a T1's counts) where the reference should be
    a = abs(nib_data(e.inp / "case1.nii.gz") * 100).round().astype("int32")
    return _save_like(e.labels / "case1.nii.gz", a), "distinct values: not a label map (an image?)"


def _pred_is_soft(e):
    a = nib_data(e.labels / "case1.nii.gz").astype("float32") * 0.6
    return _save_like(e.out / "case1.nii.gz", a), "values between labels"


def nib_data(path):
    import nibabel as nib

    return __import__("numpy").asanyarray(nib.load(path).dataobj)


def _save_like(path: Path, data) -> Path:
    import nibabel as nib

    img = nib.load(path)
    nib.save(nib.Nifti1Image(data, img.affine), path)
    return path


EVAL_ROWS = [
    ("eval-nan-reference", _ref_nan),
    ("eval-image-as-reference", _ref_is_an_image),
    ("eval-soft-prediction", _pred_is_soft),
]


@pytest.mark.parametrize("name, damage", EVAL_ROWS, ids=[r[0] for r in EVAL_ROWS])
def test_eval_scores_label_maps_only(env, capsys, name, damage):  # noqa: F811
    from seg.cli.eval import main

    shutil.copytree(env.labels, env.out)  # perfect predictions, then one file damaged
    bad, needle = damage(env)
    rc = main(["-p", str(env.out), "-l", str(env.labels), "-o", str(env.tmp / "ev"), "--no-surface"])
    out, err = capsys.readouterr()
    lines = [x for x in err.splitlines() if str(bad) in x]
    assert rc == ExitCode.FAILED and lines and needle in lines[0] and "Traceback" not in err, err
    assert "2 cases" in out and "Dice 1.0000" in out  # the other cases scored; no invented label among them
    assert "-9223372036854775808" not in out + err and "UNDECLARED" not in err
    _record(name, rc, lines[0], env.tmp)


# -- a bundle's values are data, checked (R11, R16) -----------------------------------------------------------
BUNDLE_ROWS = [
    ("bundle-postprocessing-ml-inf", {"postprocessing": {1: {"op": "min_ml", "ml": float("inf")}}}, "finite volume"),
    ("bundle-postprocessing-unknown-label", {"postprocessing": {7: {"op": "largest"}}}, "label ids [7]"),
    ("bundle-members-not-a-number", {"members": "abc"}, "members 'abc'"),
    ("bundle-channel-names-a-string", {"channel_names": "T1"}, "channel_names 'T1'"),
    ("bundle-channel-names-a-number", {"channel_names": 3}, "channel_names 3"),
    ("bundle-ct-without-statistics", {"preprocessing": {"normalize": {"mode": "ct"}}}, "normalize.clip"),
    ("bundle-absurd-spacing", {"preprocessing": {"spacing": [1.0, 1.0, 1e9]}}, "preprocessing.spacing"),
]


@pytest.mark.parametrize("name, change, needle", BUNDLE_ROWS, ids=[r[0] for r in BUNDLE_ROWS])
def test_a_bundles_values_are_checked_before_any_case(env, capsys, name, change, needle):  # noqa: F811
    path = env.bundle / "model.yaml"
    meta = yaml.safe_load(path.read_text())
    for k, v in change.items():
        meta[k] = {**meta[k], **v} if isinstance(v, dict) and isinstance(meta.get(k), dict) else v
    path.write_text(yaml.safe_dump(meta))
    rc = predict(env)
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if "model.yaml" in x]
    assert rc == ExitCode.REFUSED and lines and needle in lines[0] and "Traceback" not in err, err
    assert not env.out.exists() or not list(env.out.glob("*.nii.gz"))
    _record(name, rc, lines[0], env.tmp)


# -- inputs that are no cases (R14) ---------------------------------------------------------------------------
def test_an_empty_input_folder_is_one_line(env, capsys):  # noqa: F811
    empty = env.tmp / "empty"
    empty.mkdir()
    env.extra["i"] = empty
    rc = predict(env)
    err = capsys.readouterr().err
    assert rc == ExitCode.REFUSED and "Traceback" not in err, err
    assert err.strip().splitlines() == [f"error: {empty}: no NIfTI files (.nii, .nii.gz) or DICOM series found"]
    _record("predict-empty-input-folder", rc, err.strip(), env.tmp)


def test_a_file_name_that_is_not_utf8_is_named_and_the_batch_goes_on(env, capsys):  # noqa: F811
    odd = os.fsdecode(b"caf\xe9.nii.gz")
    shutil.copy(env.inp / "case1.nii.gz", env.inp / odd)
    rc = predict(env)
    out, err = capsys.readouterr()
    lines = [x for x in err.splitlines() if x.startswith("FAILED caf\\xe9")]
    assert rc == ExitCode.FAILED and lines and "not UTF-8" in lines[0] and "Traceback" not in err, err
    assert len(list(env.out.glob("case*.nii.gz"))) == 3 and (env.out / "summary.csv").is_file()
    assert not (env.out / odd).exists()
    _record("predict-file-name-not-utf8", rc, lines[0], env.tmp)


# -- output names never collide, nothing replaced unasked (D7) ------------------------------------------------
def test_an_input_named_like_another_cases_output_fails_named(env, capsys):  # noqa: F811
    shutil.copy(env.inp / "case2.nii.gz", env.inp / "case1_prob.nii.gz")
    rc = predict(env, "--save-probabilities")
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("FAILED case1_prob")]
    assert rc == ExitCode.FAILED and lines, err
    assert "its mask case1_prob.nii.gz would replace case1's probabilities: rename the input" in lines[0]
    import nibabel as nib

    assert nib.load(env.out / "case1_prob.nii.gz").ndim == 4  # case1's probabilities, not the other's mask
    assert (env.out / "case1.nii.gz").is_file() and (env.out / "case2.nii.gz").is_file()
    _record("predict-input-named-like-an-output", rc, lines[0], env.tmp)


MINE = '{"mine": "a file seg did not write"}'


def test_a_report_already_there_is_not_replaced_unasked(env, capsys):  # noqa: F811
    env.out.mkdir()
    (env.out / "case1.json").write_text(MINE)
    rc = predict(env)
    err = capsys.readouterr().err.strip()
    assert rc == ExitCode.REFUSED and "1 of their outputs exist already (e.g. case1.json)" in err, err
    assert (env.out / "case1.json").read_text() == MINE and not (env.out / "case0.nii.gz").exists()
    _record("predict-report-already-there", rc, err.splitlines()[-1], env.tmp)
    assert predict(env, "--overwrite") == 0 and json.loads((env.out / "case1.json").read_text())["case"] == "case1"


def test_eval_does_not_replace_a_cases_report_named_summary(env, capsys):  # noqa: F811
    from seg.cli.eval import main

    shutil.copytree(env.labels, env.out)
    (env.out / "summary.json").write_text('{"case": "summary", "mask": "summary.nii.gz"}')
    rc = main(["-p", str(env.out), "-l", str(env.labels), "--no-surface"])
    err = capsys.readouterr().err.strip()
    assert rc == ExitCode.REFUSED and "is not a seg-eval summary (a case's report?)" in err, err
    assert json.loads((env.out / "summary.json").read_text())["case"] == "summary"
    _record("eval-summary-over-a-case-report", rc, err.splitlines()[-1], env.tmp)


def test_a_long_input_name_predicts(env, capsys):  # noqa: F811
    """R18: an input name of ~240 bytes failed: the temporary beside its mask was over 255 bytes."""
    long = "n" * 240 + ".nii.gz"
    shutil.copy(env.inp / "case1.nii.gz", env.inp / long)
    assert predict(env) == 0, capsys.readouterr().err
    assert (env.out / long).is_file() and not [p for p in env.out.iterdir() if ".part" in p.name]


# -- seg-export: the bundle's default checkpoint, whole copies (R17) --------------------------------------------
def test_export_of_a_best_checkpoint_bundle_copies_every_weight_and_predicts(env, capsys, caplog):  # noqa: F811
    """R17: a k-fold bundle whose default checkpoint is best: its export is of the best weights, its -o copy holds
    weights_best.pt, and the printed next command runs (it was refused)."""
    from seg.cli.export import main as export_main
    from seg.inference.bundle import load_bundle, write_bundle_meta

    best = env.bundle / "fold_0" / "weights_best.pt"
    shutil.copy(env.bundle / "fold_0" / "weights.pt", best)
    b = load_bundle(env.bundle)
    b.meta.extra["checkpoint"] = "best"
    write_bundle_meta(env.bundle, b.meta)
    copy = env.tmp / "exported"
    assert export_main(["-m", str(env.bundle), "-o", str(copy)]) == 0
    out = capsys.readouterr().out
    # #41: the exporters' own INFO and WARNING lines (30 of a 2-fold export's 34) stay out of seg-export's output
    assert not [r for r in caplog.records if r.name.startswith(("onnx_ir", "onnxscript", "torch.onnx"))]
    assert (copy / "fold_0" / "weights_best.pt").read_bytes() == best.read_bytes()
    assert load_bundle(copy).meta.extra["export"]["onnx"]["checkpoint"] == "best"
    nxt = next(x for x in out.splitlines() if x.startswith("next: seg-predict"))
    assert "--engine onnxruntime" in nxt
    env.bundle = copy
    assert predict(env, "--engine", "onnxruntime") == 0, capsys.readouterr().err


def test_export_copy_on_a_full_disk_names_the_file_and_leaves_no_part(env, capsys, monkeypatch):  # noqa: F811
    import errno

    from seg.cli.export import main as export_main

    real = shutil.copyfile

    def full(src, dst, *a, **k):
        real(src, dst, *a, **k)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copyfile", full)
    copy = env.tmp / "exported"
    rc = export_main(["-m", str(env.bundle), "-o", str(copy)])
    err = capsys.readouterr().err.strip()
    assert (
        rc == ExitCode.REFUSED
        and err == f"error: {copy / 'fold_0' / 'weights.pt'}: cannot be written (No space left on device)"
    )
    assert not (copy / "fold_0" / "weights.pt").exists() and not list((copy / "fold_0").glob(".*part*"))
    _record("export-copy-on-a-full-disk", rc, err, env.tmp)


# -- outputs checked before the work, a full disk one line (R13) ------------------------------------------------
def test_a_run_folder_or_cache_that_cannot_be_made_is_one_line_before_any_work(synth_root, tmp_path):
    from seg.config import UserError
    from seg.run.train import train
    from tests.conftest import TINY, compose_train

    afile = tmp_path / "afile"
    afile.write_text("x")
    for extra, needle in (
        ([], "run folder (paths.output_dir) cannot be created"),
        (["data.cache=disk", f"data.cache_dir={afile / 'cache'}"], "disk cache (data.cache_dir) cannot be created"),
    ):
        run = (afile / "run") if not extra else (tmp_path / "run")
        cfg = compose_train([f"data.root={synth_root}", *TINY, "trainer.max_epochs=1", *extra], run)
        with pytest.raises(UserError) as e:
            train(cfg)
        assert needle in str(e.value) and len(str(e.value).splitlines()) == 1, str(e.value)
        assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_full_disk_while_training_is_one_line(synth_root, tmp_path, monkeypatch):
    import errno

    import pytorch_lightning as pl

    from seg.config import UserError
    from seg.run.train import train
    from tests.conftest import TINY, compose_train

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "checkpoints" / "last.ckpt"))

    monkeypatch.setattr(pl.Trainer, "fit", full)
    cfg = compose_train([f"data.root={synth_root}", *TINY, "trainer.max_epochs=1"], tmp_path / "run")
    with pytest.raises(UserError) as e:
        train(cfg)
    line = str(e.value)
    assert line.startswith(f"{tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}: the disk is full (No space left")
    assert "no epoch was kept" in line and len(line.splitlines()) == 1
    _record("train-full-disk", 2, f"error: {line}", tmp_path)


def test_eval_on_a_full_disk_names_the_summary(env, capsys, monkeypatch):  # noqa: F811
    import errno

    import seg.eval.evaluate as ev
    from seg.cli.eval import main

    shutil.copytree(env.labels, env.out)

    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ev, "write_text", full)
    rc = main(["-p", str(env.out), "-l", str(env.labels), "-o", str(env.tmp / "ev"), "--no-surface"])
    err = capsys.readouterr().err.strip()
    assert (
        rc == ExitCode.REFUSED
        and err == f"error: {env.tmp / 'ev' / 'summary.json'}: cannot be written (No space left on device)"
    )
    _record("eval-full-disk", rc, err, env.tmp)


def test_a_run_root_that_cannot_be_made_is_one_line_before_hydra(synth_root, tmp_path, monkeypatch):
    """R13: in a working folder where ``outputs`` is a file, seg-train ended in Hydra's traceback."""
    from seg.cli.compose import check_composition
    from seg.config import UserError

    monkeypatch.chdir(tmp_path)
    check_composition("train", [f"data.root={synth_root}"])  # a folder that can be made: passes
    (tmp_path / "outputs").write_text("x")
    with pytest.raises(UserError, match=r"outputs: output folder \(hydra.run.dir, under paths.log_dir\) exists and"):
        check_composition("train", [f"data.root={synth_root}"])
    check_composition("train", [f"data.root={synth_root}", f"hydra.run.dir={tmp_path / 'elsewhere'}"])
    with pytest.raises(UserError, match="outputs/run: output folder .* cannot be created"):
        check_composition("kfold", [f"data.root={synth_root}", f"hydra.run.dir={tmp_path / 'outputs' / 'run'}"])


# -- the small things a newcomer met (#41 item 9) --------------------------------------------------------------
def test_no_lock_file_stays_behind_and_an_all_failed_summary_does_not_block_the_retry(env, capsys):  # noqa: F811
    for f in env.inp.iterdir():
        f.write_bytes(b"not a volume")
    assert predict(env) == ExitCode.FAILED  # every case failed: a summary.csv of failures, no mask
    assert (env.out / "summary.csv").is_file() and not list(env.out.glob("*.nii.gz"))
    assert not (env.out / ".seg-predict.lock").exists()
    for i in range(3):
        shutil.copy(env.labels / f"case{i}.nii.gz", env.inp / f"case{i}.nii.gz")  # fixed inputs
    capsys.readouterr()
    assert predict(env) == 0, capsys.readouterr().err  # the retry runs without --overwrite
    assert len(list(env.out.glob("case*.nii.gz"))) == 3 and not (env.out / ".seg-predict.lock").exists()
    assert predict(env) == ExitCode.REFUSED  # a summary that lists written masks still stops an unasked rerun
