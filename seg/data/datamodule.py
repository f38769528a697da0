"""LightningDataModule over MONAI dictionary transforms and datasets.

Channels, classes and label names come from the dataset's ``dataset.json``. Under DDP each rank caches
only its own partition of the training (and validation) cases, instead of every rank caching all.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from enum import Enum
from pathlib import Path

import pytorch_lightning as pl
import torch
from monai import transforms as T
from monai.data import CacheDataset, DataLoader, Dataset, ThreadDataLoader, partition_dataset

from seg.config import check_option
from seg.data.datalist import DatasetError, DatasetSpec, load_dataset
from seg.data.splits import SplitError, dataset_splits
from seg.data.transforms import (
    Augment,
    Preprocessing,
    deterministic_transforms,
    random_transforms,
    sampling_cache,
)

log = logging.getLogger(__name__)


class CacheMode(str, Enum):
    NONE = "none"
    CACHE = "cache"
    PERSISTENT = "persistent"
    DISK = "disk"


class Pipeline(str, Enum):
    """How training batches are made.

    ``workers``: the deterministic steps cached in memory (``cache``), the random ones in DataLoader worker
    processes, batches moved to the device by Lightning. ``device``: MONAI's fast-training recipe: a
    ``CacheDataset`` of the deterministic steps (with the pad and the sampler's indices) whose volumes live
    on the training device (``ToDeviced``), the random crop and augmentation run on the device's tensors,
    batches from a ``ThreadDataLoader`` without worker processes. On a GPU that keeps it fed (no host
    augmentation, no copies); seg-plan chooses it when the cached cases fit in the device's memory.
    """

    WORKERS = "workers"
    DEVICE = "device"


DEFAULT_NUM_SAMPLES = 2  # patches per loaded volume
DEFAULT_NUM_WORKERS = 2  # DataLoader worker processes


class SegDataModule(pl.LightningDataModule):
    """Train/validation loaders for one fold of a dataset.

    Args:
        root: dataset folder (MSD or nnU-Net raw).
        mode: "patch" (random positive/negative-balanced patches) or "resize" (whole volume resized to
            ``resize_shape``, the AGUNet paper's mode).
        patch_size: training patch size in patch mode (also the default sliding window).
        resize_shape: the fixed network input shape in resize mode.
        spacing: target voxel spacing in mm, or None to keep the images' own.
        orientation: axis codes to reorient to (e.g. "RAS"), or None.
        normalize: ``{mode: zscore|minmax|window|none, nonzero: bool, window: [lo, hi]}``.
        crop_foreground: "none", "nonzero" (bounding box of non-zero voxels) or "head" (the paper's
            head crop: threshold ``head_threshold`` of the range, largest component, holes filled).
        head_threshold: threshold of the head crop, as a fraction of the intensity range.
        pos_neg: positive/negative patch ratio.
        num_samples: patches drawn per loaded volume (None: ``DEFAULT_NUM_SAMPLES``).
        augment: an :class:`~seg.data.transforms.Augment` or its mapping (missing or null keys: its defaults).
        batch_size: training batch size (volumes x ``num_samples`` patches).
        num_workers: DataLoader workers (None: ``DEFAULT_NUM_WORKERS``).
        cache: "none", "cache" (in memory) or "disk" (pre-processed once into ``cache_dir``, read memory-mapped:
            :mod:`seg.data.diskcache`; the workers pipeline only). "persistent", the old name of an on-disk
            cache (MONAI's, keyed by the input paths only: it trained on stale tensors), is now "disk".
        cache_rate: fraction of cases cached in memory.
        cache_dir: folder of the on-disk cache (None: ``$SEG_CACHE_DIR/preprocessed``; never the dataset's).
        fold: which fold of the splits is validation.
        num_folds: K of the k-fold split.
        split_seed: seed of the split (the one seed key: seg-kfold uses it too).
        stratify, n_strata, group_regex: the split balances label-volume strata and keeps a subject's
            cases in one fold (see :func:`seg.data.splits.dataset_splits`, shared with seg-kfold).
        splits_file: where the splits are read from (if present) or saved.
        pipeline: "workers" or "device" (see :class:`Pipeline`).
        allow_outside_root: read dataset.json entries that point outside ``root`` (refused by default).
        previous_stage: a cascade's first stage: its finished seg-kfold run folder, whose out-of-fold probabilities
            join each case's input channels (:mod:`seg.data.cascade`); None: no cascade.
        synthetic: ``{n, seed, shape, folder}``: generate the synthetic dataset into ``root`` if it is missing
            and ``root`` is ``folder`` (the project's own synthetic folder): a mistyped ``data.root`` is an
            error, not a place to fill with synthetic cases.
    """

    def __init__(
        self,
        root: str,
        mode: str = "patch",
        patch_size: Sequence[int] = (64, 64, 64),
        resize_shape: Sequence[int] | None = None,
        spacing: Sequence[float] | None = None,
        orientation: str | None = "RAS",
        normalize: Mapping | None = None,
        crop_foreground: bool | str = False,
        head_threshold: float = 0.2,
        pos_neg: Sequence[float] = (1.0, 1.0),
        num_samples: int | None = None,
        augment: Augment | Mapping | None = None,
        batch_size: int = 2,
        num_workers: int | None = None,
        cache: str = "cache",
        cache_rate: float = 1.0,
        cache_dir: str | None = None,
        fold: int = 0,
        num_folds: int = 5,
        split_seed: int = 0,
        stratify: bool = True,
        n_strata: int = 3,
        group_regex: str | None = None,
        splits_file: str | None = None,
        synthetic: Mapping | None = None,
        pipeline: str = "workers",
        allow_outside_root: bool = False,
        previous_stage: str | None = None,
    ) -> None:
        super().__init__()
        check_option("data.cache", cache, CacheMode)
        self.pipeline = check_option("data.pipeline", pipeline, Pipeline)
        self.allow_outside_root = bool(allow_outside_root)
        self.root = str(root)
        self.mode = mode
        self.patch_size = list(patch_size) if patch_size else None
        self.resize_shape = list(resize_shape) if resize_shape else None
        self.spacing = list(spacing) if spacing else None
        self.orientation = orientation
        self.normalize = dict(normalize or {"mode": "zscore", "nonzero": True})
        self.crop_foreground = crop_foreground
        self.head_threshold = head_threshold
        self.pos_neg = list(pos_neg)
        self.num_samples = DEFAULT_NUM_SAMPLES if num_samples is None else int(num_samples)
        self.augment = augment if isinstance(augment, Augment) else Augment.from_mapping(augment)
        self.batch_size = batch_size
        self.num_workers = DEFAULT_NUM_WORKERS if num_workers is None else int(num_workers)
        self.cache = cache
        self.cache_rate = cache_rate
        self.cache_dir = cache_dir
        self.fold = fold
        self.num_folds = num_folds
        self.split_seed = split_seed
        self.stratify, self.n_strata, self.group_regex = stratify, n_strata, group_regex
        self.splits_file = splits_file
        self.synthetic = dict(synthetic) if synthetic else None
        self.previous_stage = str(previous_stage) if previous_stage else None
        self._spec: DatasetSpec | None = None
        self.train_ds = self.val_ds = None
        self.train_cases: list[str] = []
        self.val_cases: list[str] = []

    # -- dataset description ------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Generate the synthetic dataset if this data config asks for it and it is not there yet."""
        if self.synthetic and not (Path(self.root) / "dataset.json").exists():
            folder = self.synthetic.get("folder")
            if folder is not None and Path(folder).resolve() != Path(self.root).resolve():
                raise DatasetError(
                    f"{Path(self.root).resolve()}: no dataset.json there (data.root points at a folder without a "
                    f"dataset; synthetic cases are generated only into {Path(folder).resolve()})"
                )
            from seg.data.synthetic import write_dataset

            s = self.synthetic
            log.info("generating synthetic dataset (%s cases) in %s", s.get("n", 24), self.root)
            write_dataset(self.root, int(s.get("n", 24)), int(s.get("seed", 0)), tuple(s.get("shape", (64, 64, 64))))

    @property
    def spec(self) -> DatasetSpec:
        if self._spec is None:
            spec = load_dataset(self.root, self.allow_outside_root)
            if self.previous_stage:
                from seg.data.cascade import attach_previous_stage

                spec = attach_previous_stage(spec, self.previous_stage)
            self._spec = spec
        return self._spec

    @property
    def preprocessing(self) -> Preprocessing:
        """The pre-processing options, as stored with a trained model (the patch is the inferer's window)."""
        return Preprocessing(
            mode=self.mode,
            resize_shape=self.resize_shape,
            spacing=self.spacing,
            orientation=self.orientation,
            normalize=self.normalize,
            crop_foreground=self.crop_foreground,
            head_threshold=self.head_threshold,
        )

    def split(self) -> tuple[list[str], list[str]]:
        path = self.splits_file or str(Path(self.root) / "splits.json")
        try:
            splits = dataset_splits(
                path, self.spec.cases, self.num_folds, self.split_seed, self.stratify, self.n_strata, self.group_regex
            )
        except SplitError as e:
            if path in str(e):
                raise
            raise SplitError(f"{self.root}: {e}") from None  # name the dataset the split is of
        if not 0 <= self.fold < len(splits):
            raise SplitError(f"data.fold={self.fold} but {path} has {len(splits)} folds (0..{len(splits) - 1})")
        return splits[self.fold]["train"], splits[self.fold]["val"]

    # -- Lightning hooks ----------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.train_ds is not None:
            return
        spec = self.spec
        self.train_cases, self.val_cases = self.split()
        by_id = spec.by_id()
        train = [by_id[c].as_dict() for c in self.train_cases]
        val = [by_id[c].as_dict() for c in self.val_cases]
        trainer = getattr(self, "trainer", None)
        world = trainer.world_size if trainer is not None else 1
        if world > 1:
            rank = trainer.global_rank
            train = partition_dataset(
                train, num_partitions=world, shuffle=True, seed=self.split_seed, even_divisible=True
            )[rank]
            val = partition_dataset(val, num_partitions=world, shuffle=False, even_divisible=False)[rank]
            log.info("rank %d/%d: %d train and %d val cases", rank, world, len(train), len(val))
        det = deterministic_transforms(spec, with_label=True, **self.preprocessing.as_dict())
        if self.pipeline == Pipeline.DEVICE:
            self._device_datasets(det, train, val)
            return
        if self.cache in ("disk", "persistent"):  # persistent: the old name, once MONAI's path-keyed cache
            self._disk_datasets(det, train, val)
            return
        rnd = random_transforms(self.mode, self.patch_size, self.pos_neg, self.num_samples, self.augment)
        self.train_ds = self._dataset(train, T.Compose(det + rnd), "train")
        self.val_ds = self._dataset(val, T.Compose(det), "val")

    def _disk_datasets(self, det: list, train: list[dict], val: list[dict]) -> None:
        """The workers pipeline over :class:`~seg.data.diskcache.DiskCacheDataset`: training entries hold the
        pad and the sampler's indices too (as the device pipeline caches them), validation entries the volume."""
        from seg.data.diskcache import DiskCacheDataset

        patch = self.mode == "patch"
        base = {"pre": self.preprocessing.as_dict(), "labels": self.spec.labels, "channels": self.spec.channel_names}
        sampling = {"sampling_pad": self.patch_size if patch else None}
        rnd = random_transforms(
            self.mode, self.patch_size, self.pos_neg, self.num_samples, self.augment, cached_indices=patch
        )
        cached = det + (sampling_cache(self.patch_size) if patch else [])
        kw = {"folder": self.cache_dir, "workers": max(1, self.num_workers)}
        self.train_ds = DiskCacheDataset(train, cached, rnd, base | sampling, **kw)
        self.val_ds = DiskCacheDataset(val, det, None, base | {"sampling_pad": None}, **kw)

    @property
    def device(self) -> torch.device:
        """The training device: the trainer's (its rank's, under DDP), else the CPU."""
        trainer = getattr(self, "trainer", None)
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def _device_datasets(self, det: list, train: list[dict], val: list[dict]) -> None:
        """The device pipeline's datasets: everything deterministic cached, on the device."""
        to_dev = T.ToDeviced(keys=["image", "label"], device=self.device)
        patch = self.mode == "patch"
        cached = det + (sampling_cache(self.patch_size) if patch else []) + [to_dev]
        rnd = random_transforms(
            self.mode, self.patch_size, self.pos_neg, self.num_samples, self.augment, cached_indices=patch
        )
        workers = max(1, self.num_workers)  # threads filling the cache
        self.train_ds = CacheDataset(train, T.Compose(cached + rnd), num_workers=workers, progress=False)
        self.val_ds = CacheDataset(val, T.Compose(det + [to_dev]), num_workers=workers, progress=False)

    def _dataset(self, items: list[dict], transform: T.Compose, name: str):
        if self.cache == "cache":
            return CacheDataset(
                items, transform, cache_rate=self.cache_rate, num_workers=max(1, self.num_workers), progress=False
            )
        return Dataset(items, transform)

    def train_dataloader(self) -> DataLoader:
        if self.pipeline == Pipeline.DEVICE:
            drop = len(self.train_ds) > self.batch_size
            return ThreadDataLoader(self.train_ds, batch_size=self.batch_size, shuffle=True, drop_last=drop)
        return DataLoader(
            self.train_ds,
            batch_size=self.batch_size,
            shuffle=True,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            drop_last=len(self.train_ds) > self.batch_size,
        )

    def val_dataloader(self) -> DataLoader:
        # whole volumes of different sizes: one per batch
        if self.pipeline == Pipeline.DEVICE:
            return ThreadDataLoader(self.val_ds, batch_size=1, shuffle=False)
        return DataLoader(
            self.val_ds,
            batch_size=1,
            shuffle=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )
