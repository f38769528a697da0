"""The self-contained model bundle: ``model.yaml`` + ``fold_<k>/weights.pt``.

``model.yaml`` holds the network's registry name and kwargs, label ids and names, input channels, the
pre-processing (its inverse is derived from it), patch/whole-volume mode, sliding-window settings, the
probability threshold and the folds. Weights are plain state dicts, loaded with ``weights_only=True``.
Nothing is pickled: moving a class breaks no bundle. A cascade's second stage holds its first stage's bundle
in ``previous/`` (``previous_stage``), so the folder still predicts by itself.
"""

from __future__ import annotations

import copy
import datetime
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import torch
import yaml

from seg.config import Precision, check_option
from seg.data.postprocess import Postprocessing
from seg.data.transforms import Preprocessing
from seg.errors import one_line
from seg.inference.errors import BundleError
from seg.io import atomic_write_bytes, write_text
from seg.nn import create_net
from seg.nn.inferer import InfererSpec

FORMAT = "seg-model/1"
# each fold's (and member's) weights: the final ones (the end of training: what the out-of-fold figures and
# seg-predict use by default, nnU-Net's checkpoint_final) and the best validated ones beside them
WEIGHTS = {"final": "weights.pt", "best": "weights_best.pt"}


class Checkpoint(str, Enum):
    """Which weights of a fold: ``final`` (default) or ``best``. The best checkpoint was chosen on the fold's
    own validation cases, so out-of-fold figures of it are optimistic; the final weights are not chosen."""

    FINAL = "final"
    BEST = "best"


MAX_LABEL_ID = 65535  # label maps are written as uint8 up to 255, uint16 up to this


REQUIRED = ("net", "labels", "channel_names", "preprocessing", "folds")
PREVIOUS = "previous"  # a cascade bundle's first stage: a bundle in this sub-folder


def _load_error(e: BaseException) -> str:
    """What ``torch.load`` failed on, in a few words (its weights-only message is a page of advice)."""
    import pickle

    if isinstance(e, pickle.UnpicklingError):
        return "UnpicklingError: not a torch.save file of tensors"
    return one_line(e)


def load_weights(path: Path, device: str = "cpu") -> dict:
    """A plain state dict, weights-only; missing, empty or unreadable files are one-line BundleErrors."""
    if not path.is_file():
        raise BundleError(f"{path}: weights missing")
    if path.stat().st_size == 0:
        raise BundleError(f"{path}: weights file is empty (0 bytes)")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt or foreign file
        raise BundleError(f"{path}: not a readable weights file ({_load_error(e)})") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BundleError(f"{path}: not a state dict of tensors")
    return dict(state)


def check_state_fits(net: torch.nn.Module, state: Mapping, path: Path, name: str) -> None:
    """Weights of another architecture (or width) -> one line with the counts, not PyTorch's key dump."""
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        first = (shapes or missing or unexpected)[0]
        raise BundleError(
            f"{path}: weights do not fit the {name!r} net of model.yaml ({len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(shapes)} of another shape, e.g. {first}): another architecture?"
        )


@dataclass
class BundleMeta:
    """``model.yaml``, typed: what a bundle records of its networks. Read with :meth:`from_mapping` (every
    problem one line naming the file), written with :func:`write_bundle_meta`.

    Args:
        net: ``{name, **kwargs}`` of a registered network (in/out channels included).
        labels: label id -> name, background included, in class order.
        channel_names: the input channels, in order.
        preprocessing: the deterministic pre-processing (:class:`~seg.data.transforms.Preprocessing`).
        inferer: the sliding window the networks were validated with (its ``roi_size`` is the patch).
        folds: the folds whose weights the bundle holds (``fold_<k>/weights.pt``).
        threshold: the two-class operating point from a k-fold threshold scan, or None (argmax).
        members: networks per fold (an ensemble of seeds: ``fold_<k>/member_<m>/``).
        postprocessing: what seg-predict does to each label map (decided by a k-fold run; none by default).
        mirror_axes: the axes training mirrored (its augmentation), the only ones ``--tta`` mirrors; None in
            bundles written before it was recorded (then all three, as before).
        previous_stage: a cascade's second stage: the sub-folder (``previous``) holding the first stage's bundle,
            whose foreground probabilities on the input's grid are the net's extra input channels; None: none.
        extra: further records kept as they are (``member_seeds``, ``cv``, ``export``, ...).
    """

    net: dict
    labels: dict[int, str]
    channel_names: list[str]
    preprocessing: Preprocessing
    inferer: InfererSpec
    folds: list[int]
    threshold: float | None = None
    members: int = 1
    postprocessing: Postprocessing = field(default_factory=Postprocessing)
    mirror_axes: list[int] | None = None
    extra: dict = field(default_factory=dict)
    created: str = ""
    previous_stage: str | None = None

    @classmethod
    def from_mapping(cls, meta: Mapping, path: Path) -> BundleMeta:
        missing = [k for k in REQUIRED if k not in meta]
        if missing:
            need = ", ".join(REQUIRED)
            raise BundleError(f"{path}: {', '.join(missing)} missing (a seg model bundle records {need})")
        if not isinstance(meta["net"], dict) or "name" not in meta["net"]:
            raise BundleError(f"{path}: net needs a registered network's name and kwargs")
        try:
            pre = dict(meta["preprocessing"] or {})
            inferer = InfererSpec.from_mapping(meta.get("inferer"))
            # bundles written before 2026-12 kept the patch in preprocessing too: it is the inferer's window
            inferer = inferer.for_data(pre.get("mode", "patch"), pre.get("patch_size"))
            preprocessing = Preprocessing.from_mapping(pre)
            labels = {int(k): str(v) for k, v in dict(meta["labels"]).items()}
            folds = [int(f) for f in meta["folds"]]
            members = meta.get("members") or 1
            if isinstance(members, bool) or not isinstance(members, int) or members < 1:
                raise ValueError(f"members {members!r} is not a count of networks (1 or more)")
            names = meta["channel_names"]
            if not isinstance(names, (list, tuple)) or not all(isinstance(c, str) for c in names):
                raise ValueError(f"channel_names {names!r} is not a list of channel names (e.g. [T1])")
            post = Postprocessing.from_mapping(meta.get("postprocessing"))
            stray = sorted(set(post.rules) - (set(labels) - {0}))
            if stray:
                raise ValueError(
                    f"postprocessing names label ids {stray} that the bundle's labels {sorted(labels)} lack"
                )
            mirror = meta.get("mirror_axes")
            mirror = None if mirror is None else sorted(int(a) for a in mirror)
            if mirror is not None and not set(mirror) <= {0, 1, 2}:
                raise ValueError(f"mirror_axes {mirror} must be axes 0, 1, 2")
            previous = meta.get("previous_stage")
            if previous not in (None, PREVIOUS):  # a fixed sub-folder: a model.yaml cannot point outside its bundle
                raise ValueError(f"previous_stage {previous!r} is not {PREVIOUS!r} (the chained first stage's folder)")
        except (TypeError, ValueError, AttributeError) as e:  # seg's own refusals and plain ValueErrors read as said
            why = " ".join(str(e).split()) if isinstance(e, ValueError) else one_line(e)
            raise BundleError(f"{path}: {why}") from None
        _check_values(path, labels, meta, folds)
        known = set(REQUIRED) | {"format", "created", "inferer", "threshold", "members", "inverse", "postprocessing"}
        known |= {"mirror_axes", "previous_stage"}
        return cls(
            net=dict(meta["net"]),
            labels=labels,
            channel_names=[str(c) for c in meta["channel_names"]],
            preprocessing=preprocessing,
            inferer=inferer,
            folds=folds,
            threshold=meta.get("threshold"),
            members=members,
            postprocessing=post,
            mirror_axes=mirror,
            extra={k: v for k, v in meta.items() if k not in known},
            created=str(meta.get("created") or ""),
            previous_stage=previous,
        )

    def as_dict(self) -> dict:
        return {
            "format": FORMAT,
            "created": self.created or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "net": dict(self.net),
            "labels": {int(k): str(v) for k, v in self.labels.items()},
            "channel_names": list(self.channel_names),
            "preprocessing": self.preprocessing.as_dict(),
            "inverse": "undo the recorded spatial steps in reverse: resize, crop (paste into the box), resampling, "
            "orientation (seg.data.inverse.invert_to_original)",
            "inferer": self.inferer.as_dict(),
            "threshold": self.threshold,
            "folds": sorted(int(f) for f in self.folds),
            **({"members": self.members} if self.members > 1 else {}),
            **({"postprocessing": self.postprocessing.as_dict()} if self.postprocessing else {}),
            **({"mirror_axes": list(self.mirror_axes)} if self.mirror_axes is not None else {}),
            **({"previous_stage": self.previous_stage} if self.previous_stage else {}),
            **self.extra,
        }

    @property
    def net_name(self) -> str:
        return str(self.net["name"])

    @property
    def in_channels(self) -> int:
        """The images a case gives (what seg-predict reads per case)."""
        return len(self.channel_names)

    @property
    def net_in_channels(self) -> int:
        """The network's input channels: the images', then a cascade's previous-stage foreground channels."""
        return len(self.channel_names) + (len(self.labels) - 1 if self.previous_stage else 0)


def _check_values(path: Path, labels: dict, meta: Mapping, folds: list[int]) -> None:
    """model.yaml values that would predict wrongly or fail on every case: one line each, before any case."""
    if len(labels) < 2 or 0 not in labels:
        raise BundleError(f"{path}: labels must hold background 0 and at least one label, got {sorted(labels)}")
    if not meta["channel_names"]:
        raise BundleError(f"{path}: channel_names is empty: the model's input channels must be named")
    if not folds:
        raise BundleError(f"{path}: folds is empty: the bundle must name the folds whose weights it holds")
    if any(i < 0 for i in labels) or max(labels) > MAX_LABEL_ID:
        raise BundleError(f"{path}: label ids must be 0..{MAX_LABEL_ID}, got {sorted(labels)}")
    thr = meta.get("threshold")
    if thr is not None and (isinstance(thr, bool) or not isinstance(thr, (int, float)) or not 0 < thr <= 1):
        raise BundleError(f"{path}: threshold {thr!r} is not a foreground probability in (0, 1] (or null: argmax)")
    out = meta["net"].get("out_channels")
    if out is not None and int(out) != len(labels):
        raise BundleError(
            f"{path}: the net has {out} output channels but labels names {len(labels)} classes ({sorted(labels)}): "
            "the bundle's labels and weights do not belong together"
        )


def output_channels(net: torch.nn.Module, in_channels: int) -> int:
    """The classes a network predicts, from one pass on the meta device (no memory, no compute)."""
    dims = 3 if any(isinstance(m, torch.nn.Conv3d) for m in net.modules()) else 2
    with torch.device("meta"):
        out = copy.deepcopy(net).to("meta").eval()(torch.empty(1, in_channels, *([64] * dims)))
    out = out[0] if isinstance(out, (list, tuple)) else out
    return int(out.shape[1])


@dataclass
class Bundle:
    root: Path
    meta: BundleMeta

    @property
    def folds(self) -> list[int]:
        return list(self.meta.folds)

    @property
    def members(self) -> int:
        """Networks per fold: 1, or an ensemble trained on the fold's training cases with different seeds."""
        return self.meta.members

    def member_dirs(self, fold: int) -> list[Path]:
        """Where fold ``fold``'s networks live: ``fold_<k>/`` (member 0) and ``fold_<k>/member_<m>/``."""
        return member_dirs(self.root, fold, self.members)

    @property
    def labels(self) -> dict[int, str]:
        return dict(self.meta.labels)

    @property
    def inferer(self) -> InfererSpec:
        """The sliding-window spec the networks were validated with."""
        return self.meta.inferer

    def predictor(
        self,
        folds: Sequence[int] | None = None,
        device: str = "cpu",
        tta: bool = False,
        overlap: float | None = None,
        threshold: float | str | None = None,
        engine: str = "torch",
        precision: str = "fp32",
        checkpoint: str = "final",
        postprocess: bool = True,
    ):
        """A :class:`~seg.inference.predictor.Predictor` over ``folds`` with the bundle's own settings;
        ``overlap`` and ``threshold`` (two-class models; ``"argmax"``: none) override the bundle's when given.
        ``engine``: see :mod:`seg.inference.engines` (``onnxruntime`` runs each fold's ``model.onnx``)."""
        from dataclasses import replace

        from seg.inference.engines import load_engine_nets
        from seg.inference.predictor import Predictor

        inferer = self.inferer if overlap is None else replace(self.inferer, overlap=overlap)
        thr = None if threshold == "argmax" else threshold if threshold is not None else self.meta.threshold
        previous = None
        if self.meta.previous_stage:  # every fold of the first stage, its own settings; only its probabilities count
            first = load_bundle(self.root / self.meta.previous_stage)
            previous = first.predictor(
                device=device, tta=tta, engine=engine, precision=precision, checkpoint=checkpoint, postprocess=False
            )
        return Predictor(
            load_engine_nets(self, folds, engine, device, precision, checkpoint),
            self.labels,
            self.meta.channel_names,
            self.meta.preprocessing,
            inferer,
            tta=tta,
            mirror_axes=self.meta.mirror_axes,
            device=device,
            threshold=thr if len(self.labels) == 2 else None,
            precision=precision,
            postprocessing=self.meta.postprocessing if postprocess else None,
            previous=previous,
        )

    def check_folds(self, folds: Sequence[int] | None) -> list[int]:
        """``folds`` (None: all), each one the bundle holds; else a one-line error."""
        folds = self.folds if folds is None else list(folds)
        unknown = sorted(set(folds) - set(self.folds))
        if unknown:
            raise BundleError(f"{self.root / 'model.yaml'}: folds {unknown} not in the bundle (has {self.folds})")
        return folds

    @staticmethod
    def weights_file(checkpoint: str) -> str:
        """The file name of a member's ``checkpoint`` weights (``final`` or ``best``)."""
        return WEIGHTS[check_option("--checkpoint", checkpoint, Checkpoint)]

    def load_nets(
        self, folds: Sequence[int] | None = None, device: str = "cpu", checkpoint: str = "final"
    ) -> list[torch.nn.Module]:
        """One network per fold and member, the ``checkpoint``'s weights (``final`` or ``best``) loaded with
        ``weights_only=True``; every problem one line naming the file."""
        folds = self.check_folds(folds)
        file = WEIGHTS[check_option("--checkpoint", checkpoint, Checkpoint)]
        net_cfg = dict(self.meta.net)
        name = net_cfg.pop("name")
        nets = []
        for path in (d / file for k in folds for d in self.member_dirs(k)):
            state = load_weights(path, device)
            try:
                net = create_net(name, **net_cfg)
            except (KeyError, TypeError, ValueError) as e:
                raise BundleError(f"{self.root / 'model.yaml'}: net {name!r} cannot be built ({one_line(e)})") from None
            check_state_fits(net, state, path, name)
            if not nets:  # what the weights predict must be what model.yaml's labels name
                k = output_channels(net, self.meta.net_in_channels)
                if k != len(self.labels):
                    raise BundleError(
                        f"{self.root / 'model.yaml'}: the net predicts {k} classes but labels names "
                        f"{len(self.labels)} ({sorted(self.labels)}): labels and weights do not belong together"
                    )
            net.load_state_dict(state)
            nets.append(net.eval())
        return nets


def member_dirs(root: str | Path, fold: int, members: int = 1) -> list[Path]:
    base = Path(root) / f"fold_{fold}"
    return [base] + [base / f"member_{m}" for m in range(1, int(members))]


def write_bundle_meta(root: str | Path, meta: BundleMeta) -> Path:
    """Write ``model.yaml`` (atomically)."""
    root = Path(root)
    write_text(root / "model.yaml", yaml.safe_dump(meta.as_dict(), sort_keys=False))
    return root / "model.yaml"


def save_weights(state_dict: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Save a plain state dict atomically."""
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, buf)
    atomic_write_bytes(path, lambda tmp: Path(tmp).write_bytes(buf.getvalue()))


def load_bundle(root: str | Path) -> Bundle:
    root = Path(root)
    path = root / "model.yaml"
    if not path.is_file():
        raise BundleError(f"{path}: not a seg model bundle (model.yaml missing)")
    try:
        meta = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise BundleError(f"{path}: not valid YAML ({one_line(e)})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BundleError(f"{path}: unknown bundle format {meta.get('format') if isinstance(meta, dict) else None!r}")
    return Bundle(root, BundleMeta.from_mapping(meta, path))


def read_checkpoint(ckpt_path: str | Path) -> tuple[dict, dict]:
    """The network's state dict and the module's hyper-parameters (``net`` = ``{name, kwargs}``,
    ``inferer``, ...) from a Lightning checkpoint, loaded weights-only."""
    path = Path(ckpt_path)
    if not path.is_file() or path.stat().st_size == 0:
        raise BundleError(f"{path}: checkpoint missing or empty")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
        hp = dict(ck["hyper_parameters"])
        hp["net"]["name"]
    except Exception as e:  # truncated, foreign or not a seg checkpoint
        raise BundleError(f"{path}: not a readable seg checkpoint ({_load_error(e)})") from None
    state = {k[len("net.") :]: v for k, v in ck["state_dict"].items() if k.startswith("net.")}
    return state, hp


def export_run_bundle(
    model_dir: str | Path,
    final_state: Mapping[str, torch.Tensor],
    best_ckpt: str | Path | None,
    hparams: Mapping,
    spec,
    preprocessing: Preprocessing,
    fold: int,
    mirror_axes: Sequence[int] | None = None,
    precision: str = "fp32",
    extra: Mapping | None = None,
    previous: str | Path | None = None,
) -> Path:
    """Write fold ``fold``'s final weights (the network as training left it), its best checkpoint's weights
    beside them when there is one, and ``model.yaml``. The network's ``{name, kwargs}`` and the inferer spec
    come from the module's own hyper-parameters, so the bundle describes exactly what was trained; ``precision``
    (the training's, ``extra.precision``) is what ``seg-predict --precision auto`` starts from; ``extra``: more
    records of the run (``seg.run.record``, ``seg.run.learned``), written with it; ``previous``: a cascade's first
    stage bundle, copied into ``previous/``."""
    import shutil

    model_dir = Path(model_dir)
    if previous is not None:
        shutil.copytree(previous, model_dir / PREVIOUS, dirs_exist_ok=True)
    save_weights(final_state, model_dir / f"fold_{fold}" / WEIGHTS["final"])
    if best_ckpt is not None:
        save_weights(read_checkpoint(best_ckpt)[0], model_dir / f"fold_{fold}" / WEIGHTS["best"])
    meta = BundleMeta(
        net=dict(hparams["net"]),
        labels=spec.labels,
        channel_names=list(spec.channel_names),
        preprocessing=preprocessing,
        inferer=InfererSpec.from_mapping(hparams.get("inferer")),
        folds=[fold],
        mirror_axes=None if mirror_axes is None else sorted(int(a) for a in mirror_axes),
        extra={
            "weights": dict(WEIGHTS) if best_ckpt is not None else {"final": WEIGHTS["final"]},
            "precision": Precision.parse(precision).value,
            **dict(extra or {}),
        },
        previous_stage=PREVIOUS if previous is not None else None,
    )
    return write_bundle_meta(model_dir, meta)


def bundle_members(out: str | Path, fold: int, member_bundles: Sequence[Path], seeds: Sequence[int]) -> Path:
    """One bundle of an ensemble's members (each trained on fold ``fold``'s cases with its own seed): member
    0's weights in ``fold_<k>/``, member m's in ``fold_<k>/member_<m>/``, ``model.yaml`` from member 0's with
    ``members`` and ``member_seeds``. Returns the bundle folder."""
    import shutil

    out = Path(out)
    for src, d in zip(member_bundles, member_dirs(out, fold, len(member_bundles))):
        d.mkdir(parents=True, exist_ok=True)
        for file in WEIGHTS.values():
            if (Path(src) / f"fold_{fold}" / file).is_file():
                shutil.copyfile(Path(src) / f"fold_{fold}" / file, d / file)
    meta = load_bundle(member_bundles[0]).meta
    if meta.previous_stage:  # a cascade's second stage: its members share the chained first stage
        shutil.copytree(Path(member_bundles[0]) / meta.previous_stage, out / meta.previous_stage, dirs_exist_ok=True)
    meta.members = len(member_bundles)
    meta.extra = {**meta.extra, "member_seeds": [int(s) for s in seeds]}
    meta.created = ""
    write_bundle_meta(out, meta)
    return out
