"""A dataset's fingerprint: what the planner needs to know of every case, computed once and cached.

Per case: shape, spacing, orientation, each channel's intensity statistics inside the foreground (the
label > 0; nnU-Net's choice, since the background differs between scanners), each label's voxel count,
volume and connected components. Dataset level: the modality of each channel from ``dataset.json``.
Computed in worker processes with a progress bar, each case checked (``seg.data.check``) in the same read of
its files (one read of the dataset, not two: on 80 whole scans the check alone took 3.6 s of a cold plan);
cached as JSON next to the plan (never inside the dataset folder, which may be read-only), only for a dataset
that passed the check, and reused, the check with it, while the dataset's files are unchanged (names, sizes
and modification times).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np

from seg.config import pool, progress_bar
from seg.data.check import Problem, check_case, dataset_problems, errors
from seg.data.components import centroid, count_components
from seg.data.datalist import Case, DatasetSpec
from seg.errors import UserError
from seg.io import NiftiVolume, read_nifti, write_text
from seg.plan.rules import is_ct

log = logging.getLogger(__name__)
VERSION = 3  # 3: intensity samples kept for CT datasets only (every version keeps only a checked dataset)
SAMPLES_PER_CASE = 10_000  # foreground intensities kept per case for the dataset percentiles (nnU-Net's number)


def dataset_key(spec: DatasetSpec) -> str:
    """Changes when any image or label file is added, removed, resized or rewritten, or dataset.json's content
    (its channels, labels) changes."""
    h = hashlib.sha256(f"v{VERSION}:{spec.root}".encode())
    meta = Path(spec.root) / "dataset.json"
    h.update(meta.read_bytes() if meta.is_file() else b"-")
    for c in spec.cases:
        for f in [*c.images, c.label or ""]:
            st = os.stat(f) if f and os.path.exists(f) else None
            h.update(f"{f}:{st.st_size if st else -1}:{st.st_mtime_ns if st else -1}".encode())
    return h.hexdigest()[:16]


def cost_key(fp: dict) -> str:
    """What a training step's data cost depends on: the cases' shapes, spacings and channel counts, in order.
    Not where the files lie or when they were written (as :func:`dataset_key` is): a dataset copied anew keeps
    its kept training-probe figures (``seg.plan.memory``)."""
    h = hashlib.sha256(f"v{VERSION}".encode())
    for c in fp["cases"]:
        h.update(json.dumps([c["shape"], c["spacing"], len(c["channels"])]).encode())
    return h.hexdigest()[:16]


def reader() -> Callable[[str], NiftiVolume]:
    """``read_nifti`` that keeps what it read: the check and the statistics of a case share one read of each file."""
    kept: dict[str, NiftiVolume] = {}

    def read(path: str) -> NiftiVolume:
        if path not in kept:
            kept[path] = read_nifti(path)
        return kept[path]

    return read


def case_fingerprint(
    case: Case, label_ids: list[int], seed: int = 0, samples: bool = True, read: Callable | None = None
) -> dict:
    """Statistics of one case (see the module docstring); ``samples``: keep the foreground intensity sample
    (the CT rule's dataset percentiles need it; nothing else reads it, and it is 96 % of the cache); ``read``:
    what loads a file (:func:`reader`'s, to reuse the check's reads)."""
    read = read or reader()
    ref = read(case.images[0])
    spacing = [float(z) for z in ref.header.get_zooms()[:3]]
    shape = [int(s) for s in ref.data.shape[:3]]
    lab = read(case.label).data if case.label else None
    if lab is not None and lab.dtype.kind not in "iu":  # a float label (checked integral): ids as integers
        lab = np.rint(lab).astype(np.int64)
    fg = lab > 0 if lab is not None else None
    channels = []
    arrays = [read(f).data for f in case.images]
    if len(arrays) == 1 and arrays[0].ndim == 4:  # MSD multi-modal: channels last in one file
        arrays = [arrays[0][..., i] for i in range(arrays[0].shape[3])]
    rng = np.random.default_rng(seed)
    for a in arrays:
        a = np.asarray(a, dtype=np.float32)
        inside = a[fg] if fg is not None and fg.any() else a.ravel()
        sample = inside if inside.size <= SAMPLES_PER_CASE else rng.choice(inside, SAMPLES_PER_CASE, replace=False)
        channels.append(
            {
                "mean": float(inside.mean()),
                "std": float(inside.std()),
                "min": float(inside.min()),
                "max": float(inside.max()),
                "p00_5": float(np.percentile(inside, 0.5)),
                "p99_5": float(np.percentile(inside, 99.5)),
                "zero_fraction": float((a == 0).mean()),
                "sample": [round(float(x), 4) for x in sample] if samples else [],
            }
        )
    labels = {}
    voxel_ml = float(np.prod(spacing)) / 1000
    for i in label_ids:
        if i == 0 or lab is None:
            continue
        m = lab == i
        n, vox = count_components(m, connectivity=26), centroid(m)
        # world mm: NIfTI's RAS+ frame, whose axes are the array axes after training's RAS reorientation
        where = None if vox is None else [round(float(x), 2) for x in nib.affines.apply_affine(ref.affine, vox)]
        labels[str(i)] = {
            "voxels": int(m.sum()),
            "volume_ml": float(m.sum()) * voxel_ml,
            "components": n,
            "centroid_ras": where,
        }
    return {
        "case_id": case.case_id,
        "shape": shape,
        "spacing": spacing,
        "orientation": "".join(nib.aff2axcodes(ref.affine)),
        "foreground_fraction": float(fg.mean()) if fg is not None else None,
        "channels": channels,
        "labels": labels,
    }


def _one(args) -> tuple[list[Problem], dict | None]:
    """One case's check (``seg.data.check``) and, where it found no error, its statistics, each file read once."""
    case, spec, seed, samples = args
    read = reader()
    problems = check_case(case, spec, read)
    return problems, None if errors(problems) else case_fingerprint(case, spec.label_ids, seed, samples, read)


def compute_fingerprint(
    spec: DatasetSpec, cache: str | Path | None = None, workers: int | None = None, progress: bool = True
) -> dict:
    """The fingerprint of ``spec``; read from ``cache`` when it matches the dataset, else computed and saved there.
    Computing it checks every case in the same read (``seg.data.check``): a dataset with errors is refused
    (:class:`UserError`, one line per error) and no fingerprint is kept, so a cached one is of a checked dataset."""
    key = dataset_key(spec)
    if cache is not None and Path(cache).is_file():
        try:
            cached = json.loads(Path(cache).read_text())
            if not isinstance(cached, dict) or not isinstance(cached.get("cases"), list):
                raise ValueError("not a fingerprint")
            if cached.get("key") == key:
                log.info("fingerprint: reusing %s", cache)
                return cached
        except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
            log.warning("%s: unreadable fingerprint cache (%s): computed again", cache, str(e).splitlines()[0])
    workers = workers or min(len(spec.cases), os.cpu_count() or 1)
    samples = is_ct(spec.channel_names)
    jobs = [(c, spec, i, samples) for i, c in enumerate(spec.cases)]
    problems, cases = dataset_problems(spec), []
    bar, task = progress_bar("fingerprint", len(jobs)) if progress else (None, None)
    try:
        with pool(workers, ProcessPoolExecutor) if workers > 1 else contextlib.nullcontext() as procs:
            for found, case in procs.map(_one, jobs, chunksize=4) if procs else map(_one, jobs):
                problems.extend(found)
                if case is not None:
                    cases.append(case)
                if bar:
                    bar.advance(task)
    finally:
        if bar:
            bar.stop()
    bad = errors(problems)
    if bad:
        lines = "\n".join(str(p) for p in bad)
        raise UserError(f"{lines}\n{len(bad)} dataset errors in {spec.root}: fix them (seg-check-data) and plan again")
    fp = {
        "key": key,
        "version": VERSION,
        "root": spec.root,
        "channel_names": spec.channel_names,
        "labels": {str(k): v for k, v in spec.labels.items()},
        "cases": cases,
    }
    if cache is not None:
        write_text(cache, json.dumps(fp))
    return fp
