from __future__ import annotations

from seg.ops.local_attn3d.functional import local_attn3d

__all__ = ["local_attn3d"]
