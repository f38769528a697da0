"""The fingerprint on small generated data: per-case facts against a direct computation, cache and its key."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from seg.data.datalist import load_dataset
from seg.plan import fingerprint as F


def test_case_facts_match_a_direct_computation(synth_root, tmp_path):
    spec = load_dataset(synth_root)
    fp = F.compute_fingerprint(spec, tmp_path / "fp.json", workers=2, progress=False)
    assert [c["case_id"] for c in fp["cases"]] == [c.case_id for c in spec.cases]
    for c, case in zip(fp["cases"], spec.cases):
        img, lab = nib.load(case.images[0]), nib.load(case.label)
        a, m = np.asanyarray(img.dataobj).astype(np.float32), np.asanyarray(lab.dataobj) > 0
        assert c["shape"] == list(img.shape) and c["spacing"] == pytest.approx(img.header.get_zooms()[:3])
        assert c["orientation"] == "".join(nib.aff2axcodes(img.affine))
        if m.any():
            assert c["channels"][0]["mean"] == pytest.approx(float(a[m].mean()), rel=1e-5)
            assert c["channels"][0]["p99_5"] == pytest.approx(float(np.percentile(a[m], 99.5)), rel=1e-5)
            want_ml = m.sum() * np.prod(img.header.get_zooms()[:3]) / 1000
            assert c["labels"]["1"]["volume_ml"] == pytest.approx(want_ml)
            assert c["labels"]["1"]["components"] == ndimage.label(m, np.ones((3, 3, 3)))[1]
            world = nib.affines.apply_affine(img.affine, np.argwhere(m).mean(0))
            assert c["labels"]["1"]["centroid_ras"] == pytest.approx(world, abs=0.01)
        else:
            assert c["labels"]["1"]["voxels"] == 0 and c["labels"]["1"]["centroid_ras"] is None
    assert fp["channel_names"] == spec.channel_names


def test_cache_is_reused_and_invalidated_and_never_written_into_the_dataset(synth_copy, tmp_path, monkeypatch):
    before = sorted(p.name for p in synth_copy.rglob("*"))
    cache = tmp_path / "plan" / "fp.json"
    spec = load_dataset(synth_copy)
    F.compute_fingerprint(spec, cache, workers=1, progress=False)
    assert json.loads(cache.read_text())["key"] == F.dataset_key(spec)
    calls = []
    real = F.case_fingerprint
    monkeypatch.setattr(F, "case_fingerprint", lambda *a, **k: calls.append(1) or real(*a, **k))
    F.compute_fingerprint(spec, cache, workers=1, progress=False)
    assert calls == []  # reused
    lab = spec.cases[0].label
    img = nib.load(lab)
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine), lab)
    os.utime(lab, ns=(1, 1))
    fp = F.compute_fingerprint(load_dataset(synth_copy), cache, workers=1, progress=False)
    assert len(calls) == len(spec.cases)  # recomputed after a label changed
    assert fp["cases"][0]["labels"]["1"]["voxels"] == 0
    assert sorted(p.name for p in synth_copy.rglob("*")) == before  # nothing new in the dataset folder
    # R15: dataset.json's channels changed (the CT rule reads the modality): computed again
    calls.clear()
    meta = json.loads((synth_copy / "dataset.json").read_text())
    meta["modality"] = {"0": "CT"}
    (synth_copy / "dataset.json").write_text(json.dumps(meta))
    F.compute_fingerprint(load_dataset(synth_copy), cache, workers=1, progress=False)
    assert len(calls) == len(spec.cases)


def test_intensity_samples_are_kept_for_ct_only(synth_root, tmp_path):
    """The foreground sample feeds the CT rule alone; for other modalities the cache holds the statistics
    only (the 200-case hippocampus cache was 6.2 MB with them, 96 % of it the samples)."""
    import json
    import shutil

    from seg.data.datalist import load_dataset
    from seg.plan.fingerprint import compute_fingerprint

    mr = compute_fingerprint(load_dataset(synth_root), tmp_path / "mr.json", progress=False)
    assert all(ch["sample"] == [] and "p99_5" in ch for c in mr["cases"] for ch in c["channels"])
    ct = shutil.copytree(synth_root, tmp_path / "ct")
    meta = json.loads((ct / "dataset.json").read_text())
    meta["modality"] = {"0": "CT"}
    (ct / "dataset.json").write_text(json.dumps(meta))
    fp = compute_fingerprint(load_dataset(ct), tmp_path / "ct.json", progress=False)
    assert all(len(c["channels"][0]["sample"]) > 0 for c in fp["cases"] if c["foreground_fraction"])


def test_the_check_and_the_statistics_share_one_read_of_each_file(synth_copy, tmp_path, monkeypatch):
    """A cold plan reads the dataset once: the check runs on the fingerprint's reads (each file read once), a
    dataset with an error is refused with every error and no cache, and a cached fingerprint reads no file."""
    from seg.errors import UserError

    reads = []
    real = F.read_nifti
    monkeypatch.setattr(F, "read_nifti", lambda p: reads.append(p) or real(p))
    spec = load_dataset(synth_copy)
    cache = tmp_path / "fp.json"
    F.compute_fingerprint(spec, cache, workers=1, progress=False)
    files = [f for c in spec.cases for f in [*c.images, c.label]]
    assert sorted(reads) == sorted(files)  # each once, the check's reads included
    monkeypatch.setattr(nib, "load", lambda *a: pytest.fail("a file was read for a cached fingerprint"))
    F.compute_fingerprint(spec, cache, workers=1, progress=False)
    monkeypatch.undo()
    for case in spec.cases[:2]:  # two broken labels: both named, nothing kept
        img = nib.load(case.label)
        nib.save(nib.Nifti1Image(np.full(img.shape, 7, np.uint8), img.affine), case.label)
    cache.unlink()
    with pytest.raises(UserError) as e:
        F.compute_fingerprint(load_dataset(synth_copy), cache, workers=2, progress=False)
    lines = str(e.value).splitlines()
    assert [x.split(":")[0] for x in lines[:2]] == [f"ERROR {c.label}" for c in spec.cases[:2]]
    assert "[7] are not declared" in lines[0] and lines[2].startswith("2 dataset errors in")
    assert not cache.exists()
