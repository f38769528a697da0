"""The one sliding-window inferer: its settings (:class:`InfererSpec`) and the call (:func:`sliding_window`).

Training validation, k-fold out-of-fold prediction and ``seg-predict`` all run a network over a whole
volume through this module, and the spec travels with the model (checkpoint hyper-parameters and the
bundle's ``model.yaml``), so the three use the same windows, overlap and blending. The defaults live here
only; configs list the keys with ``null`` ("the default") so that an override such as
``model.inferer.overlap=0.25`` needs no ``+``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from enum import Enum

import torch
from monai.inferers import sliding_window_inference

from seg.config import UserError, check_option

log = logging.getLogger(__name__)


class Blend(str, Enum):
    GAUSSIAN = "gaussian"
    CONSTANT = "constant"


@dataclass(frozen=True)
class InfererSpec:
    """How a network is run over a whole volume.

    Args:
        roi_size: window size; None runs the whole (pre-processed) volume as one window. Patch-mode
            training resolves None to its patch size (:meth:`for_data`).
        overlap: fraction of a window shared with its neighbour along each axis, in [0, 1).
        sw_batch_size: windows per forward pass.
        mode: blending of overlapping windows ("gaussian" or "constant").
    """

    roi_size: tuple[int, ...] | None = None
    overlap: float = 0.5
    sw_batch_size: int = 2
    mode: str = "gaussian"

    def __post_init__(self) -> None:
        if self.roi_size is not None:
            object.__setattr__(self, "roi_size", tuple(int(r) for r in self.roi_size))
            if any(r < 1 for r in self.roi_size):
                raise UserError(f"inferer.roi_size must be positive, got {list(self.roi_size)}")
        if not 0.0 <= float(self.overlap) < 1.0:
            raise UserError(f"inferer.overlap must be in [0, 1), got {self.overlap}")
        if int(self.sw_batch_size) < 1:
            raise UserError(f"inferer.sw_batch_size must be >= 1, got {self.sw_batch_size}")
        object.__setattr__(self, "overlap", float(self.overlap))
        object.__setattr__(self, "sw_batch_size", int(self.sw_batch_size))
        object.__setattr__(self, "mode", check_option("inferer.mode", self.mode, Blend))

    @classmethod
    def from_mapping(cls, m: Mapping | None) -> InfererSpec:
        """From a config or ``model.yaml`` mapping; missing or null keys take the defaults above."""
        known = {f.name for f in fields(cls)}
        m = dict(m or {})
        unknown = sorted(set(m) - known)
        if unknown:
            raise UserError(f"inferer: unknown keys {unknown} (known: {sorted(known)})")
        return cls(**{k: v for k, v in m.items() if v is not None})

    def for_data(self, mode: str, patch_size: Sequence[int] | None) -> InfererSpec:
        """Resolve ``roi_size=None`` for the data mode: the patch size in patch mode, whole volume in resize mode."""
        if self.roi_size is None and mode == "patch" and patch_size:
            return replace(self, roi_size=tuple(patch_size))
        return self

    def as_dict(self) -> dict:
        d = asdict(self)
        d["roi_size"] = list(self.roi_size) if self.roi_size is not None else None
        return d


def sliding_window(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, spec: InfererSpec) -> torch.Tensor:
    """``fn`` over ``x [B, C, *S]`` by windows of ``spec`` -> ``[B, K, *S]``.

    A CUDA out-of-memory in the whole-volume accumulators (the windows themselves fit) falls back to
    stitching on the CPU.
    """
    if spec.roi_size is None:
        return fn(x)
    kw = dict(
        roi_size=list(spec.roi_size),
        sw_batch_size=spec.sw_batch_size,
        predictor=fn,
        overlap=spec.overlap,
        mode=spec.mode,
    )
    try:
        return sliding_window_inference(x, **kw)
    except torch.cuda.OutOfMemoryError:
        if x.device.type != "cuda":
            raise
        torch.cuda.empty_cache()
        log.warning("GPU out of memory for a %s volume: stitching the sliding windows on the CPU", list(x.shape[2:]))
        return sliding_window_inference(x, **kw, sw_device=x.device, device="cpu").to(x.device)


def first_output(out: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """The full-resolution head of a deep-supervision output (a list in training), else the tensor."""
    return out[0] if isinstance(out, (list, tuple)) else out


def class_index(scores: torch.Tensor, dim: int, keepdim: bool = False) -> torch.Tensor:
    """The argmax over the class axis ``dim`` (the first maximum on ties, as ``argmax``). ``max(dim).indices``:
    PyTorch's CPU ``argmax`` over a short class axis is ~30x slower (0.46 s against 0.012 s for 2 classes of
    2 M voxels on 2 cores), 15 s of a 512x512x300 prediction."""
    return scores.max(dim, keepdim=keepdim).indices
