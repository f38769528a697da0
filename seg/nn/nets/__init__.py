"""Importing this package registers every built-in network."""

from __future__ import annotations

from seg.nn.nets import monai_nets, transdae, unet  # noqa: F401
from seg.nn.nets.unet import UNet

__all__ = ["UNet"]
