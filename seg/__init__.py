"""seg: 3D medical image segmentation with attention U-Nets."""

from __future__ import annotations

__version__ = "0.1.0"
