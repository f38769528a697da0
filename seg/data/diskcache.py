"""``data.cache: disk``: each case pre-processed once into uncompressed arrays on disk, read memory-mapped.

MONAI's ``CacheDataset`` keeps every pre-processed case in RAM (a dataset larger than RAM cannot train) and its
``PersistentDataset`` keys its files by the input paths only (a corrected label or a changed spacing trains on
the old tensors). This cache is what nnU-Net's preprocessed folder is, keyed by content:

- one entry per case, named by a sha256 of the deterministic pre-processing (every option), the dataset's
  label ids and channel names, the sampling pad (the patch) and the sha256 of every image and label file (and a
  cascade's previous-stage file): a
  changed file or option is a new entry, built again; every fold, member and later run with the same key
  reads the same entry;
- an entry is a folder of ``.npy`` files (``image``, ``label`` and, in patch mode, the positive/negative
  sampler's voxel indices, :func:`~seg.data.transforms.sampling_cache`) and ``meta.json`` (the affine), built
  in a private temporary folder and renamed into place (two runs building one entry: one rename wins, the
  other's copy is dropped);
- training reads the arrays memory-mapped (copy-on-write): a worker touches the patch it crops, not the case,
  and the resident memory of a run does not grow with the dataset;
- an entry that cannot be read is rebuilt with one warning.

Where: ``data.cache_dir``, else ``$SEG_CACHE_DIR/preprocessed`` (:func:`seg.io.cache_root`), never the
dataset's folder. Old entries are not pruned: the folder may be deleted at any time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai import transforms as T
from monai.data import Dataset, MetaTensor

from seg.config import pool
from seg.errors import one_line
from seg.io import cache_root, file_sha256

log = logging.getLogger(__name__)

FORMAT = 1  # bump when an entry's files change meaning
ARRAYS = ("image", "label", "label_fg_indices", "label_bg_indices")


def default_folder() -> Path:
    return cache_root() / "preprocessed"


def case_key(item: dict, settings: dict) -> str:
    """The entry name of one case: the settings (pre-processing, labels, channels, pad) and its files' sha256."""
    files = item["image"] if isinstance(item["image"], list) else [item["image"]]
    files = files + [item[k] for k in ("label", "prev") if item.get(k)]
    text = json.dumps(
        {"format": FORMAT, "settings": settings, "files": [file_sha256(f) for f in files]}, sort_keys=True
    )
    return hashlib.sha256(text.encode()).hexdigest()[:40]


class DiskCacheDataset(Dataset):
    """The cases of ``items`` through ``cached`` (deterministic, built once into ``folder``), then ``random``
    on every read.

    Args:
        items: MONAI dictionaries (``case_id``, ``image``, ``label``).
        cached: the deterministic transforms (and :func:`~seg.data.transforms.sampling_cache` in patch mode).
        random: the transforms of every read (patch sampling, augmentation), or None.
        settings: what, beside the files, the cached arrays depend on (part of each key).
        folder: where the entries live.
        workers: threads building missing entries.
    """

    def __init__(
        self,
        items: Sequence[dict],
        cached: Sequence,
        random: Sequence | None,
        settings: dict,
        folder: str | Path | None = None,
        workers: int = 1,
    ) -> None:
        self.folder = Path(folder) if folder else default_folder()
        self.cached = T.Compose(list(cached))
        self.random = T.Compose(list(random)) if random else None
        self.folder.mkdir(parents=True, exist_ok=True)
        keys = [case_key(it, settings) for it in items]
        self.entries = [self.folder / k for k in keys]
        super().__init__(list(items), transform=None)
        todo = [i for i, e in enumerate(self.entries) if not self._readable(e)]
        if todo:
            log.info("pre-processing %d of %d cases into %s", len(todo), len(items), self.folder)
            with pool(workers) as threads:
                list(threads.map(self._build, todo))

    @staticmethod
    def _readable(entry: Path) -> bool:
        if not entry.is_dir():
            return False
        try:
            json.loads((entry / "meta.json").read_text())
            np.load(entry / "image.npy", mmap_mode="r")
            np.load(entry / "label.npy", mmap_mode="r") if (entry / "label.npy").exists() else None
            return True
        except (OSError, ValueError) as e:
            log.warning("%s: unreadable cache entry (%s): built again", entry, one_line(e))
            shutil.rmtree(entry, ignore_errors=True)
            return False

    def _build(self, i: int) -> None:
        out = self.cached(dict(self.data[i]))
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=self.folder))
        try:
            for name in ARRAYS:
                if name in out:
                    v = out[name]
                    v = v.as_tensor() if isinstance(v, MetaTensor) else v
                    np.save(tmp / f"{name}.npy", np.asarray(v.cpu() if isinstance(v, torch.Tensor) else v))
            affine = np.asarray(getattr(out["image"], "affine", np.eye(4)), dtype=np.float64).tolist()
            (tmp / "meta.json").write_text(json.dumps({"format": FORMAT, "affine": affine}))
            try:
                tmp.rename(self.entries[i])
            except OSError:  # another run built it meanwhile: theirs is the same
                if not self.entries[i].is_dir():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def load(self, i: int) -> dict:
        """Entry ``i`` as the cached transforms gave it: arrays memory-mapped copy-on-write, as tensors."""
        entry = self.entries[i]
        affine = torch.as_tensor(json.loads((entry / "meta.json").read_text())["affine"], dtype=torch.float64)
        d = {k: v for k, v in self.data[i].items() if k not in ARRAYS}
        for name in ARRAYS:
            path = entry / f"{name}.npy"
            if path.exists():
                arr = torch.from_numpy(np.load(path, mmap_mode="c"))
                d[name] = MetaTensor(arr, affine=affine) if name in ("image", "label") else arr
        return d

    def _transform(self, index: int):
        d = self.load(index)
        return self.random(d) if self.random is not None else d
