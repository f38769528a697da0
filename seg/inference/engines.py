"""The engines a bundle's networks run on, behind one small interface, chosen in one place.

An engine net is a callable ``x [N, C, *S] float32 -> logits [N, K, *S] float32`` on torch tensors:

* ``torch`` (:class:`TorchNet`): the bundle's ``weights.pt`` in PyTorch, on the CPU or CUDA, fp32 or bf16
  autocast (softmax and the ensemble stay in fp32 outside the engine);
* ``onnxruntime`` (:class:`OrtNet`): each fold's ``model.onnx`` written by ``seg-export``, in ONNX Runtime's
  CPU provider, fp32 (it has no bf16 convolutions).

:func:`check_engine` refuses the combinations an engine cannot run (one line each), :func:`load_engine_nets`
loads a bundle's folds for one engine: as NATTEN picks a backend, the choice and its refusals live here and
nowhere else.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from seg.config import Precision, check_option
from seg.errors import UserError, one_line
from seg.inference.errors import BundleError
from seg.io import file_sha256
from seg.nn.inferer import first_output
from seg.nn.utils import prepare_for_inference


class Engine(str, Enum):
    TORCH = "torch"
    ONNXRUNTIME = "onnxruntime"


class TorchNet:
    """A PyTorch network as an engine net: channels-last 3D input, bf16 autocast when ``precision`` is bf16,
    the full-resolution head of a deep-supervision net, fp32 logits."""

    engine = Engine.TORCH.value

    def __init__(self, module: nn.Module, device: str | torch.device = "cpu", precision: str = "fp32") -> None:
        self.device = torch.device(device)
        self.module = prepare_for_inference(module, channels_last=True).to(self.device)
        self.precision = Precision.parse(precision).value

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last_3d) if x.ndim == 5 else x
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            return first_output(self.module(x)).float()


_ARENA: list = []


def _share_arena(ort) -> None:
    """One CPU memory arena for every session of the process (made once). Each session's own arena keeps
    its peak: five folds on the 256^3 T1 peaked at 4.65 GB with their own arenas; with one shared arena two
    folds took 1.16 GB instead of 2.22 GB at the same speed (84 vs 89 s); without any arena 0.92 GB but 25 %
    slower."""
    if not _ARENA:
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
        _ARENA.append(info)


def ort_session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session with the process's thread count (torch's), created once per fold."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads or torch.get_num_threads())
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only: its warnings about unused initializers are not the user's
    _share_arena(ort)
    so.add_session_config_entry("session.use_env_allocators", "1")
    try:
        return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for a bad file
        raise BundleError(f"{path}: not a loadable ONNX model ({one_line(e, 200)})") from None


class OrtNet:
    """One fold's ONNX model as an engine net (CPU, fp32)."""

    engine = Engine.ONNXRUNTIME.value
    precision = "fp32"

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        self.path = Path(path)
        self.session = ort_session(path, threads)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).contiguous().numpy())
        return torch.from_numpy(self.session.run(None, {self.input_name: arr})[0])


def check_engine(engine: str, device: str, precision: str) -> str:
    """The engine's name, or a one-line refusal of what it cannot run."""
    engine = check_option("--engine", engine, Engine)
    precision = Precision.parse(precision, "--precision").value
    if engine == Engine.ONNXRUNTIME and device != "cpu":
        raise UserError("--engine onnxruntime runs on the CPU here: add --device cpu")
    if engine == Engine.ONNXRUNTIME and precision == "bf16":
        raise UserError("--precision bf16 is for --engine torch: ONNX Runtime's CPU provider has no bf16 convolutions")
    return engine


def load_engine_nets(
    bundle, folds: Sequence[int] | None, engine: str, device: str, precision: str, checkpoint: str = "final"
) -> list:
    """The engine nets of ``folds`` (every ensemble member of each) of ``bundle``, after :func:`check_engine`.
    ONNX Runtime runs the exported files, which seg-export makes of the bundle's default checkpoint's weights."""
    engine = check_engine(engine, device, precision)
    if engine == Engine.ONNXRUNTIME:
        exported = str(((bundle.meta.extra.get("export") or {}).get("onnx") or {}).get("checkpoint") or "final")
        if checkpoint != exported:
            raise UserError(
                f"--checkpoint {checkpoint}: the ONNX export of {bundle.root} holds the {exported} weights "
                f"(--engine torch runs either; seg-export exports the bundle's default checkpoint)"
            )
        return [OrtNet(p) for p in onnx_paths(bundle, folds, bundle.weights_file(exported))]
    return [TorchNet(m, device, precision) for m in bundle.load_nets(folds, checkpoint=checkpoint)]


def onnx_paths(bundle, folds: Sequence[int] | None, weights: str = "weights.pt") -> list[Path]:
    """Each fold's (and member's) ``model.onnx``, each one checked against the export record in ``model.yaml``:
    it is the file seg-export wrote (its sha256), from the weights the bundle holds now (theirs). A missing,
    swapped or stale file is a one-line error naming it: it would predict, silently, for another model."""
    record = ((bundle.meta.extra.get("export") or {}).get("onnx") or {}).get("files") or {}
    paths = []
    for k in bundle.check_folds(folds):
        for d in bundle.member_dirs(k):
            path = d / "model.onnx"
            fix = f"re-export: seg-export -m {bundle.root}"
            if not path.is_file():
                raise BundleError(f"{path}: missing: --engine onnxruntime needs an exported bundle ({fix})")
            rec = record.get(str(d.relative_to(bundle.root)))
            if rec is None:
                raise BundleError(f"{path}: not recorded in model.yaml's export (an older or foreign file): {fix}")
            if file_sha256(path) != rec.get("sha256"):
                raise BundleError(
                    f"{path}: changed since seg-export wrote it (its sha256 is not the recorded one): {fix}"
                )
            if file_sha256(d / weights) != rec.get("weights_sha256"):
                raise BundleError(f"{path}: exported from other weights than {d / weights} holds now: {fix}")
            paths.append(path)
    return paths


def as_engine_net(net, device: str | torch.device = "cpu", precision: str = "fp32"):
    """An engine net from a PyTorch module (wrapped in :class:`TorchNet`) or an engine net (as it is)."""
    return TorchNet(net, device, precision) if isinstance(net, nn.Module) else net
