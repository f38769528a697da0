"""Ops with hand-written fast paths. Plain PyTorch (+ Triton): nothing here imports Lightning or Hydra."""

from __future__ import annotations

from seg.ops.local_attn3d import local_attn3d

__all__ = ["local_attn3d"]
