"""``local_attn3d``: 3D neighbourhood attention (NATTEN semantics) with backends chosen by capability.

Backends: ``torch`` (the fast CPU path: blocked queries against a shared key halo in PyTorch's fused
CPU flash-attention kernel, O(N * E) memory), ``reference`` (naive, for tests), ``triton`` (fused forward,
dQ and dK/dV kernels; CUDA, or the CPU under TRITON_INTERPRET=1 for tests).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from enum import Enum

import torch

from seg.config import check_option
from seg.ops.local_attn3d.custom_op import local_attn3d_op
from seg.ops.local_attn3d.reference import local_attn3d_reference
from seg.ops.local_attn3d.torch_impl import local_attn3d_torch_forward


class Backend(str, Enum):
    TORCH = "torch"
    REFERENCE = "reference"
    TRITON = "triton"


def _triple(x: int | Sequence[int], name: str) -> tuple[int, int, int]:
    t = (int(x),) * 3 if isinstance(x, int) else tuple(int(v) for v in x)
    if len(t) != 3:
        raise ValueError(f"local_attn3d: {name} needs 1 or 3 values, got {list(t)}")
    return t


def local_attn3d(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: int | Sequence[int],
    dilation: int | Sequence[int] = 1,
    scale: float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """3D neighbourhood attention.

    Every query attends to exactly ``kernel_size`` keys per axis: the window centred on it, shifted inward
    at the borders (no padding); with ``dilation`` d it sees only keys of its own residue class
    (coordinate mod d). Matches NATTEN's 3D neighbourhood attention.

    Args:
        q, k, v: ``[B, D, H, W, heads, head_dim]`` (NATTEN's heads-last layout), one dtype and device.
        kernel_size: odd window size, int or per-axis triple.
        dilation: int or per-axis triple; ``kernel_size * dilation`` must fit each axis.
        scale: score scale, default ``head_dim ** -0.5``.
        backend: "torch", "reference" or "triton"; None picks by capability.

    Returns:
        ``[B, D, H, W, heads, head_dim]``.
    """
    ks, dil = _check_args(q, k, v, kernel_size, dilation)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if not math.isfinite(float(scale)):
        raise ValueError(f"local_attn3d: scale must be finite, got {scale}")
    if backend is None:
        backend = "triton" if q.is_cuda and _triton_available() else "torch"
    backend = check_option("local_attn3d: backend", backend, Backend)
    if backend == "reference":
        return local_attn3d_reference(q, k, v, ks, dil, float(scale))
    if backend == "torch":
        if not _needs_graph(q, k, v):
            # inference in eager mode: the implementation itself, no custom-op dispatch (whose first call
            # imports torch's tracing machinery, sympy among it: ~180 MB of RSS once per process)
            return local_attn3d_torch_forward(q, k, v, ks, dil, float(scale))[0]
        return local_attn3d_op(q, k, v, list(ks), list(dil), float(scale))
    if not _triton_available():
        raise RuntimeError("local_attn3d: backend='triton' needs the triton package (Linux x86_64)")
    if not q.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            "local_attn3d: backend='triton' runs on CUDA tensors (or on the CPU under TRITON_INTERPRET=1, "
            "for tests); use backend='torch' on the CPU"
        )
    from seg.ops.local_attn3d.autograd import TritonNeighbourhoodAttention

    return TritonNeighbourhoodAttention.apply(q, k, v, ks, dil, float(scale))


def _check_args(q, k, v, kernel_size, dilation) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """One-line ValueErrors for tensors and windows the op cannot take; the kernel and dilation triples."""
    if q.ndim != 6:
        raise ValueError(f"local_attn3d: q must be [B, D, H, W, heads, head_dim], got rank {q.ndim}")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"local_attn3d: q, k, v shapes differ: {list(q.shape)}, {list(k.shape)}, {list(v.shape)}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"local_attn3d: q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError("local_attn3d: q, k, v are on different devices")
    ks, dil = _triple(kernel_size, "kernel_size"), _triple(dilation, "dilation")
    for n, kk, d, ax in zip(q.shape[1:4], ks, dil, "DHW"):
        if kk < 1 or kk % 2 == 0:
            raise ValueError(f"local_attn3d: kernel_size must be odd and positive, got {kk} on axis {ax}")
        if d < 1:
            raise ValueError(f"local_attn3d: dilation must be >= 1, got {d} on axis {ax}")
        if kk * d > n:
            raise ValueError(
                f"local_attn3d: kernel {kk} x dilation {d} = {kk * d} is larger than axis {ax} ({n} voxels)"
            )
    return ks, dil


def _needs_graph(*ts: torch.Tensor) -> bool:
    """Whether the call must go through the custom op: autograd records it, or torch.compile traces it."""
    return torch.compiler.is_compiling() or (torch.is_grad_enabled() and any(t.requires_grad for t in ts))


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
