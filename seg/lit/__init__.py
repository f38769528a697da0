from __future__ import annotations

from seg.lit.module import SegModule

__all__ = ["SegModule"]
