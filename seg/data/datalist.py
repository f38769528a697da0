"""Dataset layouts: MSD (``dataset.json`` with a ``training`` list) and nnU-Net raw.

Both become one :class:`DatasetSpec`: channel names, ``{label id: name}``, and cases with their image
channel files and label file. Multi-channel cases are a list of files (nnU-Net) or one 4D file (MSD).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from seg.errors import SegError

NIFTI_ENDINGS = (".nii.gz", ".nii")


class DatasetError(SegError, ValueError):
    """A dataset's description cannot be used; the message names the file and the problem."""


def case_id_from_path(path: str | Path) -> str:
    """``.../hippocampus_003.nii.gz`` -> ``hippocampus_003``."""
    name = Path(path).name
    for ending in NIFTI_ENDINGS:
        if name.endswith(ending):
            return name[: -len(ending)]
    return Path(name).stem


@dataclass
class Case:
    case_id: str
    images: list[str]
    label: str | None = None
    previous: str | None = None  # a cascade's previous stage: its foreground probabilities (seg.data.cascade)

    def as_dict(self) -> dict:
        """MONAI dictionary form: ``image`` is one path, or a list of channel paths; ``prev`` the previous
        stage's probabilities of a cascade."""
        d: dict = {"case_id": self.case_id, "image": self.images[0] if len(self.images) == 1 else list(self.images)}
        if self.previous is not None:
            d["prev"] = self.previous
        if self.label is not None:
            d["label"] = self.label
        return d


@dataclass
class DatasetSpec:
    root: str
    layout: str  # "msd" | "nnunet"
    channel_names: list[str]
    labels: dict[int, str]  # label id -> name, background (0) included
    cases: list[Case] = field(default_factory=list)
    file_ending: str = ".nii.gz"
    channels_in_one_file: bool = False  # MSD multi-modal: one 4D file per case
    declared_cases: int | None = None  # dataset.json's numTraining, where it gives one
    previous_channels: list[str] = field(default_factory=list)  # a cascade's: one per foreground label

    @property
    def in_channels(self) -> int:
        """The network's input channels: the images', then the previous stage's of a cascade."""
        return len(self.channel_names) + len(self.previous_channels)

    @property
    def out_channels(self) -> int:
        return len(self.labels)

    @property
    def label_ids(self) -> list[int]:
        return sorted(self.labels)

    @property
    def foreground_names(self) -> list[str]:
        return [self.labels[i] for i in self.label_ids if i != 0]

    def by_id(self) -> dict[str, Case]:
        return {c.case_id: c for c in self.cases}


def _read_json(path: Path) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"{path}: dataset.json not found (expected an MSD or nnU-Net raw dataset folder)") from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def _shared_hint(root: Path) -> str:
    """Where a plan's ``${seg_shared:...}`` dataset resolved to the default beside the code (inside a venv, from a
    wheel) and ``SEG_SHARED_DATA`` is unset: say that it names the shared data's folder."""
    import os

    from seg.config import shared_data

    if os.environ.get("SEG_SHARED_DATA") or not root.is_relative_to(Path(shared_data()).resolve()):
        return ""
    return f" (a ${{seg_shared:...}} path: set SEG_SHARED_DATA to the folder of the shared data, {root.name} in it)"


def load_dataset(root: str | Path, allow_outside_root: bool = False) -> DatasetSpec:
    """Read an MSD or nnU-Net raw dataset folder (its ``dataset.json``).

    ``allow_outside_root``: accept ``dataset.json`` entries that point outside the dataset folder (``../``,
    absolute paths). Off by default: a dataset.json copied from elsewhere must not make seg read, and train
    on, files its user never put in the dataset (``data.allow_outside_root=true``, ``--allow-outside-root``).
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder does not exist{_shared_hint(root)}")
    meta_path = root / "dataset.json"
    meta = _read_json(meta_path)
    if "training" in meta:
        if not allow_outside_root:
            _check_inside(root, meta_path, meta["training"])
        return _load_msd(root, meta_path, meta)
    if "channel_names" in meta:
        return _load_nnunet(root, meta_path, meta)
    raise DatasetError(
        f"{meta_path}: neither MSD (a 'training' list) nor nnU-Net raw ('channel_names', 'labels', 'file_ending')"
    )


def read_labels(path: str | Path) -> dict[int, str]:
    """The ``labels`` of one dataset.json file (MSD ``{"0": "background"}`` or nnU-Net ``{"background": 0}``),
    read from that file itself: ``seg-eval -d custom.json`` names the file, not its folder."""
    path = Path(path)
    if path.is_dir():
        path = path / "dataset.json"
    if not path.is_file():
        raise DatasetError(f"{path}: no such dataset.json")
    meta = _read_json(path)
    if not isinstance(meta, dict) or not isinstance(meta.get("labels"), dict):
        raise DatasetError(f"{path}: no 'labels' mapping (MSD or nnU-Net dataset.json)")
    name_to_id = all(isinstance(v, (int, list, tuple)) for v in meta["labels"].values()) and "training" not in meta
    return _parse_label_ids(path, meta["labels"], name_to_id=name_to_id)


def _check_inside(root: Path, meta_path: Path, training) -> None:
    """Every training entry's files lie inside ``root`` (lexically: a symlinked folder inside it is inside)."""
    import os

    if not isinstance(training, list):
        return
    for k, item in enumerate(training):
        if not isinstance(item, dict):
            continue
        for key in ("image", "label"):
            values = item.get(key)
            for v in values if isinstance(values, list) else [values]:
                if not isinstance(v, str):
                    continue
                full = os.path.normpath(v if os.path.isabs(v) else os.path.join(root, v))
                if os.path.commonpath([full, str(root)]) != str(root):
                    raise DatasetError(
                        f"{meta_path}: training entry {k} {key} {v!r} points outside the dataset folder; "
                        "move it in, or allow it explicitly (data.allow_outside_root=true, --allow-outside-root)"
                    )


def _channel_names(meta_path: Path, channels, key: str) -> list[str]:
    """``{"0": "T1", "1": "FLAIR"}`` -> names in channel order; keys must be the integers 0..n-1."""
    if not isinstance(channels, dict) or not channels:
        raise DatasetError(f'{meta_path}: {key!r} must map channel numbers to names, e.g. {{"0": "T1"}}')
    try:
        ids = sorted(int(k) for k in channels)
    except (TypeError, ValueError):
        bad = next(k for k in channels if not str(k).strip().lstrip("-").isdigit())
        raise DatasetError(f"{meta_path}: {key!r} key {bad!r} is not a channel number (0, 1, ...)") from None
    if ids != list(range(len(ids))):
        raise DatasetError(f"{meta_path}: {key!r} keys must be 0..{len(ids) - 1}, got {ids}")
    by_id = {int(k): v for k, v in channels.items()}
    return [str(by_id[i]) for i in ids]


def _parse_label_ids(meta_path: Path, labels: dict, name_to_id: bool) -> dict[int, str]:
    out: dict[int, str] = {}
    for k, v in labels.items():
        ident, name = (v, k) if name_to_id else (k, v)
        if isinstance(ident, (list, tuple)):
            raise DatasetError(
                f"{meta_path}: region-based label {name!r}={ident} is not supported; give one id per label"
            )
        try:
            out[int(ident)] = str(name)
        except (TypeError, ValueError):
            raise DatasetError(f"{meta_path}: label id {ident!r} of {name!r} is not an integer") from None
    if 0 not in out:
        raise DatasetError(f"{meta_path}: 'labels' must declare background as 0")
    return out


def _load_msd(root: Path, meta_path: Path, meta: dict) -> DatasetSpec:
    from monai.data import load_decathlon_datalist

    modality = meta.get("modality") or meta.get("channel_names") or {"0": "image"}
    channel_names = _channel_names(meta_path, modality, "modality")
    labels = _parse_label_ids(meta_path, meta.get("labels") or {}, name_to_id=False)
    training = meta.get("training")
    if not isinstance(training, list) or not training:
        raise DatasetError(f"{meta_path}: 'training' must be a non-empty list of {{'image': ..., 'label': ...}}")
    for k, item in enumerate(training):
        if not isinstance(item, dict) or "image" not in item or "label" not in item:
            raise DatasetError(f"{meta_path}: training entry {k} needs 'image' and 'label' (got {item!r:.80})")
    try:
        items = load_decathlon_datalist(meta_path, is_segmentation=True, data_list_key="training", base_dir=root)
    except (KeyError, ValueError, TypeError) as e:
        raise DatasetError(f"{meta_path}: bad 'training' list ({e})") from None
    cases = []
    for item in items:
        images = item["image"] if isinstance(item["image"], list) else [item["image"]]
        cases.append(Case(case_id_from_path(images[0]), [str(p) for p in images], str(item["label"])))
    return DatasetSpec(
        root=str(root),
        layout="msd",
        channel_names=channel_names,
        labels=labels,
        cases=cases,
        channels_in_one_file=len(channel_names) > 1 and all(len(c.images) == 1 for c in cases),
        declared_cases=_declared(meta),
    )


def _load_nnunet(root: Path, meta_path: Path, meta: dict) -> DatasetSpec:
    channel_names = _channel_names(meta_path, meta["channel_names"], "channel_names")
    labels = _parse_label_ids(meta_path, meta.get("labels") or {}, name_to_id=True)
    ending = meta.get("file_ending", ".nii.gz")
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    if not labels_dir.is_dir():
        raise DatasetError(f"{labels_dir}: missing labelsTr folder")
    case_ids = sorted(p.name[: -len(ending)] for p in labels_dir.iterdir() if p.name.endswith(ending))
    # cases present only as images are reported by the check (label missing)
    if images_dir.is_dir():
        pat = re.compile(r"^(.*)_(\d{4})" + re.escape(ending) + "$")
        for p in images_dir.iterdir():
            m = pat.match(p.name)
            if m and m.group(1) not in case_ids:
                case_ids.append(m.group(1))
    cases = [
        Case(
            cid,
            [str(images_dir / f"{cid}_{i:04d}{ending}") for i in range(len(channel_names))],
            str(labels_dir / f"{cid}{ending}"),
        )
        for cid in sorted(case_ids)
    ]
    _check_channel_suffix(images_dir, cases, ending)
    return DatasetSpec(
        root=str(root), layout="nnunet", channel_names=channel_names, labels=labels, cases=cases, file_ending=ending,
        declared_cases=_declared(meta),
    )  # fmt: skip


def _declared(meta: dict) -> int | None:
    n = meta.get("numTraining")
    return n if isinstance(n, int) and not isinstance(n, bool) else None


def _check_channel_suffix(images_dir: Path, cases: list, ending: str) -> None:
    """nnU-Net images named ``CASE.nii.gz`` instead of ``CASE_0000.nii.gz``: one line saying so (each case's
    image would otherwise be reported missing, one line per case, by effect, not by cause)."""
    bare = [c for c in cases if not Path(c.images[0]).exists() and (images_dir / f"{c.case_id}{ending}").exists()]
    if bare:
        c = bare[0]
        raise DatasetError(
            f"{images_dir}: {len(bare)} image(s) named without the channel suffix (e.g. {c.case_id}{ending}): "
            f"nnU-Net's layout names each channel CASE_0000{ending}, CASE_0001{ending}, ...: rename them "
            f"({c.case_id}{ending} -> {c.case_id}_0000{ending})"
        )
