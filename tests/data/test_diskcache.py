"""data.cache=disk: pre-processed once, keyed by content, read memory-mapped, rebuilt when stale or corrupt."""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pytest
import torch
from monai import transforms as T

from seg.data import diskcache
from seg.data.datamodule import SegDataModule
from seg.data.transforms import deterministic_transforms


def _dm(root, tmp_path, cache_dir, **kw):
    args = dict(
        mode="patch",
        patch_size=[16, 20, 24],
        num_workers=0,
        num_samples=2,
        batch_size=2,
        num_folds=4,
        cache="disk",
        cache_dir=str(cache_dir),
        splits_file=str(tmp_path / "splits.json"),
        augment={"flip_prob": 0.5},
    )
    dm = SegDataModule(str(root), **(args | kw))
    dm.setup("fit")
    return dm


def _mapped_from(address: int) -> str | None:
    """The file a process address is mapped from (/proc/self/maps), or None."""
    for line in open("/proc/self/maps"):
        parts = line.split()
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        if lo <= address < hi:
            return parts[5] if len(parts) > 5 else None
    return None


def _entries(folder):
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_disk_cache_gives_the_pipelines_tensors_and_reads_them_mapped(synth_copy, tmp_path):
    cache = tmp_path / "cache"
    dm = _dm(synth_copy, tmp_path, cache)
    assert len(_entries(cache)) == len(dm.train_cases) + len(dm.val_cases)  # one entry a case and role
    # validation: exactly the deterministic pre-processing's volume
    det = T.Compose(deterministic_transforms(dm.spec, with_label=True, **dm.preprocessing.as_dict()))
    by_id = dm.spec.by_id()
    want = det(by_id[dm.val_cases[0]].as_dict())
    got = dm.val_ds[0]
    torch.testing.assert_close(got["image"].as_tensor(), want["image"].as_tensor())
    torch.testing.assert_close(got["label"].as_tensor(), want["label"].as_tensor())
    # training: patches of the patch size, drawn from memory-mapped arrays
    loaded = dm.train_ds.load(0)
    assert _mapped_from(loaded["image"].data_ptr()) == str(dm.train_ds.entries[0] / "image.npy")
    samples = dm.train_ds[0]
    assert len(samples) == 2 and all(tuple(s["image"].shape[1:]) == (16, 20, 24) for s in samples)
    assert all("label_fg_indices" not in s for s in samples)
    batch = next(iter(dm.train_dataloader()))
    assert tuple(batch["image"].shape) == (4, 1, 16, 20, 24)


def test_every_fold_reads_the_same_entries_and_a_changed_input_builds_anew(synth_copy, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    _dm(synth_copy, tmp_path, cache, fold=0)
    first = set(_entries(cache))
    built = []
    orig = diskcache.DiskCacheDataset._build
    monkeypatch.setattr(diskcache.DiskCacheDataset, "_build", lambda self, i: built.append(i) or orig(self, i))
    _dm(synth_copy, tmp_path, cache, fold=0)
    assert built == []  # the same key: nothing pre-processed again
    # a corrected label: that case's entries are new, the others are read
    dm = _dm(synth_copy, tmp_path, cache, fold=0)
    case = dm.spec.by_id()[dm.train_cases[0]]
    img = nib.load(case.label)
    data = np.asarray(img.dataobj).copy()
    data[tuple(s // 2 for s in data.shape)] = 1 - data[tuple(s // 2 for s in data.shape)]
    nib.save(nib.Nifti1Image(data, img.affine, img.header), case.label)
    _dm(synth_copy, tmp_path, cache, fold=0)
    assert len(built) == 1
    # a changed pre-processing (spacing): every case is new
    built.clear()
    _dm(synth_copy, tmp_path, cache, fold=0, spacing=[1.5, 1.5, 1.5])
    assert len(built) == len(dm.train_cases) + len(dm.val_cases)
    assert first < set(_entries(cache))


def test_a_corrupt_entry_is_built_again_with_one_warning(synth_copy, tmp_path, caplog):
    cache = tmp_path / "cache"
    dm = _dm(synth_copy, tmp_path, cache)
    entry = dm.val_ds.entries[0]
    (entry / "image.npy").write_bytes(b"not an array")
    with caplog.at_level(logging.WARNING, logger="seg.data.diskcache"):
        dm2 = _dm(synth_copy, tmp_path, cache)
    warned = [r.getMessage() for r in caplog.records if "unreadable cache entry" in r.getMessage()]
    assert len(warned) == 1 and str(entry) in warned[0]
    assert dm2.val_ds[0]["image"].shape == dm.val_ds[0]["image"].shape


def test_disk_cache_default_folder_is_segs_cache_not_the_dataset(synth_copy, tmp_path, monkeypatch):
    monkeypatch.setenv("SEG_CACHE_DIR", str(tmp_path / "segcache"))
    before = sorted(p.name for p in synth_copy.rglob("*"))
    dm = SegDataModule(
        str(synth_copy),
        patch_size=[16, 16, 16],
        num_workers=0,
        num_folds=4,
        cache="disk",
        splits_file=str(tmp_path / "splits.json"),
    )
    dm.setup("fit")
    assert sorted(p.name for p in synth_copy.rglob("*")) == before
    assert len(_entries(tmp_path / "segcache" / "preprocessed")) == 8


def test_disk_cache_key_names_every_setting(synth_root):
    item = {"image": str(next((synth_root / "imagesTr").iterdir())), "label": None}
    a = diskcache.case_key(item, {"pre": {"spacing": None}})
    assert a == diskcache.case_key(dict(item), {"pre": {"spacing": None}})
    assert a != diskcache.case_key(item, {"pre": {"spacing": [1, 1, 1]}})
    assert diskcache.FORMAT == 1
    with pytest.raises(FileNotFoundError):
        diskcache.case_key({"image": str(synth_root / "missing.nii.gz")}, {})


def _rss_anon_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _growth_while_reading(ds) -> float:
    """The largest anonymous-memory growth (MB) while every training item is read once, items dropped."""
    import ctypes
    import gc

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    base, peak = _rss_anon_mb(), 0.0
    for i in range(len(ds)):
        ds[i]
        peak = max(peak, _rss_anon_mb() - base)
    return peak


def _plain_dataset(root, n: int, shape) -> object:
    """``n`` uncompressed cases of noise with a foreground block (fast to write and read; the test is memory)."""
    import json

    rng = np.random.default_rng(0)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(n):
        label = np.zeros(shape, np.uint8)
        label[40:60, 40:60, 40:60] = 1
        image = rng.normal(100, 20, shape).astype(np.float32) + 50 * label
        nib.save(nib.Nifti1Image(image, np.eye(4)), root / "imagesTr" / f"c{i}.nii")
        nib.save(nib.Nifti1Image(label, np.eye(4)), root / "labelsTr" / f"c{i}.nii")
    items = [{"image": f"./imagesTr/c{i}.nii", "label": f"./labelsTr/c{i}.nii"} for i in range(n)]
    meta = {"modality": {"0": "T1"}, "labels": {"0": "background", "1": "block"}, "numTraining": n}
    (root / "dataset.json").write_text(json.dumps(meta | {"training": items}))
    return root


def test_a_dataset_twice_the_memory_it_may_use_is_read_from_disk(tmp_path):
    """A run reading a disk cache holds no case in memory: over an epoch of reads, anonymous memory grows by
    under half the cache's size (the memory such a run may use), where the in-memory cache grows by all of it."""
    root = _plain_dataset(tmp_path / "big", 8, (128, 128, 128))
    kw = dict(patch_size=[32, 32, 32], num_folds=4, augment=None, splits_file=str(tmp_path / "splits.json"))
    dm = _dm(root, tmp_path, tmp_path / "cache", **kw)
    volumes_mb = sum((e / f"{n}.npy").stat().st_size for e in dm.train_ds.entries for n in ("image", "label")) / 2**20
    assert volumes_mb > 90  # 6 training cases of 128^3, image and label in float32: 96 MB
    disk = _growth_while_reading(dm.train_ds)
    print(f"disk cache {volumes_mb:.0f} MB: anonymous memory grew {disk:.1f} MB over an epoch of reads")
    assert disk < volumes_mb / 2, (disk, volumes_mb)
    ram = SegDataModule(str(root), cache="cache", num_workers=0, **kw)
    before = _rss_anon_mb()
    ram.setup("fit")  # MONAI's in-memory cache: every case loaded now, and held
    assert _rss_anon_mb() - before > 0.8 * volumes_mb
