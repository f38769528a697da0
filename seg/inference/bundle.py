"""The self-contained model bundle: ``model.yaml`` + ``fold_<k>/weights.pt``.

``model.yaml`` holds the network's registry name and kwargs, label ids and names, input channels, the
pre-processing (its inverse is derived from it), patch/whole-volume mode, sliding-window settings, the
probability threshold and the folds. Weights are plain state dicts, loaded with ``weights_only=True``.
Nothing is pickled: moving a class breaks no bundle.
"""

from __future__ import annotations

import datetime
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from seg.inference.errors import BundleError
from seg.io import atomic_write_bytes, write_text
from seg.nn import create_net
from seg.nn.inferer import InfererSpec

FORMAT = "seg-model/1"


REQUIRED = ("net", "labels", "channel_names", "preprocessing", "folds")


def one_line(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())[:300]


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
class Bundle:
    root: Path
    meta: dict

    @property
    def folds(self) -> list[int]:
        return [int(f) for f in self.meta["folds"]]

    @property
    def members(self) -> int:
        """Networks per fold: 1, or an ensemble trained on the fold's training cases with different seeds."""
        return int(self.meta.get("members") or 1)

    def member_dirs(self, fold: int) -> list[Path]:
        """Where fold ``fold``'s networks live: ``fold_<k>/`` (member 0) and ``fold_<k>/member_<m>/``."""
        return member_dirs(self.root, fold, self.members)

    @property
    def labels(self) -> dict[int, str]:
        return {int(k): str(v) for k, v in self.meta["labels"].items()}

    @property
    def inferer(self) -> InfererSpec:
        """The sliding-window spec the networks were validated with."""
        try:
            return InfererSpec.from_mapping(self.meta.get("inferer"))
        except (TypeError, ValueError) as e:
            raise BundleError(f"{self.root / 'model.yaml'}: inferer: {e}") from None

    def predictor(
        self,
        folds: Sequence[int] | None = None,
        device: str = "cpu",
        tta: bool = False,
        overlap: float | None = None,
        threshold: float | str | None = None,
        engine: str = "torch",
        precision: str = "fp32",
    ):
        """A :class:`~seg.inference.predictor.Predictor` over ``folds`` with the bundle's own settings;
        ``overlap`` and ``threshold`` (two-class models; ``"argmax"``: none) override the bundle's when given.
        ``engine="onnxruntime"`` runs each fold's ``model.onnx`` (written by ``seg-export``) in one ONNX
        Runtime session per fold, on the CPU."""
        from dataclasses import replace

        from seg.inference.predictor import Predictor

        inferer = self.inferer if overlap is None else replace(self.inferer, overlap=overlap)
        thr = None if threshold == "argmax" else threshold if threshold is not None else self.meta.get("threshold")
        nets = self.load_onnx(folds) if engine == "onnxruntime" else self.load_nets(folds)
        return Predictor(
            nets,
            self.labels,
            self.meta["channel_names"],
            self.meta["preprocessing"],
            inferer,
            tta=tta,
            device=device,
            threshold=thr if len(self.labels) == 2 else None,
            precision=precision,
        )

    def _check_folds(self, folds: Sequence[int] | None) -> list[int]:
        folds = self.folds if folds is None else list(folds)
        unknown = sorted(set(folds) - set(self.folds))
        if unknown:
            raise BundleError(f"{self.root / 'model.yaml'}: folds {unknown} not in the bundle (has {self.folds})")
        return folds

    def load_onnx(self, folds: Sequence[int] | None = None) -> list:
        """One ONNX Runtime session per fold (``fold_<k>/model.onnx``, made by ``seg-export``)."""
        from seg.inference.onnx_engine import OrtNet

        nets = []
        for k in self._check_folds(folds):
            for d in self.member_dirs(k):
                path = d / "model.onnx"
                if not path.is_file():
                    raise BundleError(
                        f"{path}: missing: --engine onnxruntime needs an exported bundle (seg-export {self.root})"
                    )
                nets.append(OrtNet(path))
        return nets

    def load_nets(self, folds: Sequence[int] | None = None, device: str = "cpu") -> list[torch.nn.Module]:
        """One network per fold and member, weights loaded with ``weights_only=True``; every problem one line
        naming the file."""
        folds = self._check_folds(folds)
        net_cfg = dict(self.meta["net"])
        name = net_cfg.pop("name")
        nets = []
        for path in (d / "weights.pt" for k in folds for d in self.member_dirs(k)):
            state = load_weights(path, device)
            try:
                net = create_net(name, **net_cfg)
            except (KeyError, TypeError, ValueError) as e:
                raise BundleError(f"{self.root / 'model.yaml'}: net {name!r} cannot be built ({one_line(e)})") from None
            check_state_fits(net, state, path, name)
            net.load_state_dict(state)
            nets.append(net.eval())
        return nets


def member_dirs(root: str | Path, fold: int, members: int = 1) -> list[Path]:
    base = Path(root) / f"fold_{fold}"
    return [base] + [base / f"member_{m}" for m in range(1, int(members))]


def write_bundle_meta(
    root: str | Path,
    net: Mapping,
    labels: Mapping[int, str],
    channel_names: Sequence[str],
    preprocessing: Mapping,
    inferer: InfererSpec | Mapping,
    folds: Sequence[int],
    threshold: float | None = None,
    extra: Mapping | None = None,
) -> Path:
    """Write ``model.yaml`` (atomically)."""
    root = Path(root)
    meta = {
        "format": FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "net": dict(net),
        "labels": {int(k): str(v) for k, v in labels.items()},
        "channel_names": list(channel_names),
        "preprocessing": dict(preprocessing),
        "inverse": "undo the recorded spatial steps in reverse: resize, crop (paste into the box), resampling, "
        "orientation (seg.data.inverse.invert_to_original)",
        "inferer": (inferer if isinstance(inferer, InfererSpec) else InfererSpec.from_mapping(inferer)).as_dict(),
        "threshold": threshold,
        "folds": sorted(int(f) for f in folds),
        **(dict(extra) if extra else {}),
    }
    write_text(root / "model.yaml", yaml.safe_dump(meta, sort_keys=False))
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
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise BundleError(f"{path}: {', '.join(missing)} missing (a seg model bundle records {', '.join(REQUIRED)})")
    if not isinstance(meta["net"], dict) or "name" not in meta["net"]:
        raise BundleError(f"{path}: net needs a registered network's name and kwargs")
    return Bundle(root, meta)


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


def export_run_bundle(model_dir: str | Path, ckpt: str | Path, spec, preprocessing: Mapping, fold: int) -> Path:
    """Write fold ``fold``'s weights from a Lightning checkpoint and ``model.yaml``.

    The network's ``{name, kwargs}`` and the inferer spec are read from the checkpoint's own
    hyper-parameters, so the bundle describes exactly what was trained and validated.
    """
    state, hp = read_checkpoint(ckpt)
    model_dir = Path(model_dir)
    save_weights(state, model_dir / f"fold_{fold}" / "weights.pt")
    return write_bundle_meta(
        model_dir,
        hp["net"],
        spec.labels,
        spec.channel_names,
        preprocessing,
        InfererSpec.from_mapping(hp.get("inferer")),
        [fold],
    )
