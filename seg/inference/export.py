"""Export a bundle's networks to ONNX or TorchScript, each checked against PyTorch before it is kept.

What is exported is the network's logits on the pre-processed grid (``x: float32 [N, C, D, H, W]`` ->
``logits: float32 [N, K, D, H, W]``, batch and spatial axes dynamic); pre-processing, the sliding window,
the fold ensemble, TTA, the softmax and the exact inverse stay in seg (they are the same for every
engine). BatchNorm is folded into the convolutions first (eval mode). Each exported fold is checked at
two input sizes on random input: its softmax must equal PyTorch's within ``PARITY_TOL``, or the export is
refused with one line and nothing is written. ``model.yaml`` records the file, opset, layout, dynamic axes
and the exporting versions; the ONNX file's own metadata carries the label names, channel names and the
bundle's format, so it describes itself outside seg.

Hand-written because torch.onnx (the dynamo exporter) exports and onnxruntime runs, but neither knows a
bundle: which folds, which metadata, which parity check and which refusals.
"""

from __future__ import annotations

import copy
import json
import logging
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from seg.errors import one_line
from seg.inference.bundle import FORMAT, WEIGHTS, Bundle, BundleError, write_bundle_meta
from seg.inference.engines import OrtNet
from seg.io import atomic_write_bytes, file_sha256
from seg.nn.inferer import first_output
from seg.nn.registry import net_card
from seg.nn.utils import fuse_conv_bn

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")
FILES = {"onnx": "model.onnx", "torchscript": "model.ts"}
OPSET = 18
PARITY_TOL = 1e-4  # max |softmax difference| allowed between the exported model and PyTorch (fp32)
# two check sizes (multiples of 16: every registered net's pooling takes them); the second is anisotropic
CHECK_SHAPES = ((32, 32, 32), (48, 32, 64))


class ExportError(BundleError):
    """A network cannot be exported (one line: which and why)."""


def check_exportable(name: str) -> None:
    """A net whose card says it cannot be exported -> one line saying why (measured with torch 2.13 and
    onnxruntime 1.31; the reasons live on the cards, ``seg.nn.registry.NetCard.export``)."""
    try:
        reason = net_card(name).export
    except KeyError as e:
        raise ExportError(f"net {name!r}: {e.args[0]}") from None
    if reason:
        raise ExportError(f"net {name!r} cannot be exported: {reason}")


class Logits(nn.Module):
    """The network's first output (deep-supervision heads dropped), as inference uses it."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return first_output(self.net(x))


def versions() -> dict:
    import onnx
    import onnxruntime

    return {"torch": str(torch.__version__), "onnx": str(onnx.__version__), "onnxruntime": str(onnxruntime.__version__)}


def _softmax(t: torch.Tensor | np.ndarray) -> torch.Tensor:
    return torch.softmax(torch.as_tensor(t).float(), 1)


def _export_onnx(module: nn.Module, x: torch.Tensor, path: Path) -> None:
    dim = torch.export.Dim
    dyn = {"x": {0: dim.DYNAMIC, 2: dim.DYNAMIC, 3: dim.DYNAMIC, 4: dim.DYNAMIC}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(
            module,
            (x,),
            dynamo=True,
            input_names=["x"],
            output_names=["logits"],
            dynamic_shapes=dyn,
            opset_version=OPSET,
            external_data=False,
            verbose=False,
        )
    prog.save(str(path), external_data=False)


def _export_torchscript(module: nn.Module, x: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, (x,), check_trace=False)
        torch.jit.save(traced, str(path))


def _load_exported(fmt: str, path: Path):
    """The exported file as a callable on torch tensors (loaded once per check)."""
    if fmt == "onnx":
        return OrtNet(path, threads=torch.get_num_threads())
    ts = torch.jit.load(str(path))

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return ts(x)

    return run


def parity(fmt: str, module: nn.Module, path: Path, in_channels: int, seed: int = 0) -> float:
    """Max |softmax(exported) - softmax(PyTorch)| over ``CHECK_SHAPES`` (random input, batch 1)."""
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    exported = _load_exported(fmt, path)
    for shape in CHECK_SHAPES:
        x = torch.randn(1, in_channels, *shape, generator=g)
        with torch.inference_mode():
            ref = _softmax(module(x))
        try:
            out = _softmax(exported(x))
        except Exception as e:  # the runtime's own errors: a shape baked in, an unsupported op
            raise ExportError(f"the exported model fails at input size {list(shape)} ({one_line(e, 200)})") from None
        if out.shape != ref.shape:
            got, want = list(out.shape), list(ref.shape)
            raise ExportError(f"the exported model returns {got} at {list(shape)}, PyTorch {want}")
        worst = max(worst, float((out - ref).abs().max()))
    return worst


def export_fold(
    net: nn.Module, name: str, in_channels: int, fmt: str, path: Path, metadata: dict | None = None
) -> float:
    """Export one fold's network to ``path`` (atomically) after checking it; returns the parity figure."""
    check_exportable(name)
    module = Logits(fuse_conv_bn(net)).eval()
    x = torch.randn(1, in_channels, *CHECK_SHAPES[0])
    with tempfile.TemporaryDirectory(prefix=".seg_export.", dir=path.parent) as tmp:
        tmp_path = Path(tmp) / path.name
        try:
            (_export_onnx if fmt == "onnx" else _export_torchscript)(module, x, tmp_path)
        except Exception as e:  # torch.onnx / torch.jit raise many types; one line says which
            raise ExportError(f"net {name!r} cannot be exported to {fmt} ({one_line(e, 240)})") from None
        diff = parity(fmt, module, tmp_path, in_channels)
        if diff > PARITY_TOL:
            raise ExportError(
                f"net {name!r}: the {fmt} export's softmax differs from PyTorch's by {diff:.2g} (> {PARITY_TOL:g}); "
                "refused"
            )
        if fmt == "onnx":
            _write_onnx_metadata(tmp_path, {**(metadata or {}), "seg_net": name})
        data = tmp_path.read_bytes()
    atomic_write_bytes(path, lambda t: Path(t).write_bytes(data))
    return diff


def _write_onnx_metadata(path: Path, meta: dict) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for k, v in meta.items():
        p = model.metadata_props.add()
        p.key, p.value = k, v
    model.producer_name = "seg"
    onnx.save(model, str(path))


def onnx_metadata(bundle: Bundle) -> dict:
    """The key/value strings an exported ONNX file carries about the bundle."""
    return {
        "seg_format": FORMAT,
        "seg_labels": json.dumps({str(k): v for k, v in bundle.labels.items()}),
        "seg_channel_names": json.dumps(list(bundle.meta.channel_names)),
        "seg_preprocessing": json.dumps(bundle.meta.preprocessing.as_dict()),
        "seg_inferer": json.dumps(bundle.meta.inferer.as_dict()),
        "seg_input": "x: float32 [N, C, D, H, W] pre-processed as model.yaml's preprocessing says",
        "seg_output": "logits: float32 [N, K, D, H, W]; softmax over K, classes in label-id order",
    }


def _check_target(bundle: Bundle, root: Path, where: list) -> None:
    """Before any work: ``-o`` holds no other bundle, and every folder an export lands in takes a file."""
    import tempfile

    if root.resolve() != bundle.root.resolve() and (root / "model.yaml").exists():
        raise ExportError(f"{root}: holds a model bundle already (model.yaml): give -o an empty or new folder")
    for _, d in where:
        folder = root / d
        probe = folder if folder.exists() else next(p for p in folder.parents if p.exists())
        try:
            with tempfile.NamedTemporaryFile(dir=probe, prefix=".seg_write_test."):
                pass
        except OSError as e:
            why = e.strerror or e
            raise ExportError(f"{probe}: cannot write the export there ({why}); nothing was written") from None


def export_bundle(
    bundle: Bundle, fmt: str = "onnx", folds: Sequence[int] | None = None, out: str | Path | None = None
) -> dict:
    """Export ``folds`` of ``bundle`` into ``out`` (default: the bundle itself) and record it in ``model.yaml``.

    With ``out`` given, the bundle is copied there (model.yaml + weights) and the exports land in the copy:
    the source is never written. Everything is checked before the first file is written (the formats, the
    net, the target folders); the record ties each exported file to its bundle: the sha256 of the weights it
    was exported from and of the file itself, and the parity figure (``seg-predict --engine onnxruntime``
    refuses a file that does not match). Returns the ``export`` record written to ``model.yaml``.
    """
    import shutil

    if fmt not in FORMATS:
        raise ExportError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    folds = bundle.folds if folds is None else list(folds)
    name = bundle.meta.net_name
    check_exportable(name)  # before loading weights: the answer does not depend on them
    checkpoint = str(bundle.meta.extra.get("checkpoint") or "final")  # what seg-predict runs by default
    nets = bundle.load_nets(folds, checkpoint=checkpoint)
    root = Path(out) if out is not None else bundle.root
    # (fold, member folder relative to the bundle) in the order load_nets returns the networks
    where = [(k, d.relative_to(bundle.root)) for k in folds for d in bundle.member_dirs(k)]
    _check_target(bundle, root, where)
    if root.resolve() != bundle.root.resolve():  # every weights file of the member (best too), each whole or not
        for _, d in where:
            for file in WEIGHTS.values():
                if (bundle.root / d / file).is_file():
                    dst = root / d / file
                    try:
                        atomic_write_bytes(dst, lambda tmp, src=bundle.root / d / file: shutil.copyfile(src, tmp))
                    except OSError as e:
                        raise ExportError(f"{dst}: cannot be written ({e.strerror or e})") from None
    metadata = onnx_metadata(bundle)
    figures: dict = {}
    files: dict = {}
    for (k, d), net in zip(where, nets):
        path = root / d / FILES[fmt]
        diff = export_fold(net, name, bundle.meta.net_in_channels, fmt, path, metadata)
        figures[k] = max(figures.get(k, 0.0), diff)  # the worst member of the fold
        files[str(d)] = {
            "weights_sha256": file_sha256(root / d / WEIGHTS[checkpoint]),
            "sha256": file_sha256(path),
            "parity": diff,
        }
        log.info("%s: %s written (softmax max |diff| vs PyTorch %.2g)", d, path, diff)
    meta = copy.deepcopy(bundle.meta)
    if out is not None:
        meta.folds = sorted(folds)
    exports = dict(meta.extra.get("export") or {})
    exports[fmt] = {**_record(fmt, bundle, folds, figures, files), "checkpoint": checkpoint}
    meta.extra["export"] = exports
    write_bundle_meta(root, meta)
    return exports[fmt]


def _record(fmt: str, bundle: Bundle, folds: list[int], figures: dict, files: dict) -> dict:
    return {
        "file": f"fold_<k>/{FILES[fmt]}"
        + (f" (members 1..: fold_<k>/member_<m>/{FILES[fmt]})" if bundle.members > 1 else ""),
        "folds": sorted(folds),
        **({"opset": OPSET} if fmt == "onnx" else {}),
        "input": "x: float32 [N, C, D, H, W] (channels first, pre-processed)",
        "output": "logits: float32 [N, K, D, H, W] (softmax over K gives seg's probabilities)",
        "dynamic_axes": ["N", "D", "H", "W"],
        "bn_folded": True,
        "parity_max_abs_softmax_diff": {int(k): float(f"{v:.3g}") for k, v in figures.items()},
        "parity_inputs": [list(s) for s in CHECK_SHAPES],
        "files": {d: {**f, "parity": float(f"{f['parity']:.3g}")} for d, f in files.items()},
        "versions": versions(),
    }
