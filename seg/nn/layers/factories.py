"""Small layer factories keyed by ``spatial_dims`` and string options with "did you mean" errors."""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

import torch.nn as nn

from seg.config import check_option


class Norm(str, Enum):
    BATCH = "batch"
    INSTANCE = "instance"
    NONE = "none"


class Upsample(str, Enum):
    TRANSPOSE = "transpose"
    TRILINEAR = "trilinear"
    WAU = "wau"


class Gate(str, Enum):
    """How an attention gate joins the decoder and skip features (``none``: no gate)."""

    CONCAT = "concat"
    ADD = "add"
    NONE = "none"


class Bottleneck(str, Enum):
    NONE = "none"
    DUAL = "dual"
    POSITION = "position"
    CHANNEL = "channel"


def ensure_tuple(value: int | Sequence[int], n: int, name: str = "value") -> tuple[int, ...]:
    """Normalise ``int | Sequence[int]`` to a tuple of length ``n``."""
    if isinstance(value, int):
        return (value,) * n
    out = tuple(int(v) for v in value)
    if len(out) != n:
        raise ValueError(f"{name} needs {n} values (one per spatial axis), got {list(out)}")
    return out


def conv_layer(spatial_dims: int, *args, **kwargs) -> nn.Module:
    """``nn.Conv2d`` or ``nn.Conv3d``."""
    return {2: nn.Conv2d, 3: nn.Conv3d}[_dims(spatial_dims)](*args, **kwargs)


def conv_transpose_layer(spatial_dims: int, *args, **kwargs) -> nn.Module:
    """``nn.ConvTranspose2d`` or ``nn.ConvTranspose3d``."""
    return {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[_dims(spatial_dims)](*args, **kwargs)


def norm_layer(norm: str, spatial_dims: int, channels: int) -> nn.Module:
    """Batch, instance (affine) or no normalisation."""
    check_option("norm", norm, Norm)
    if norm == "none":
        return nn.Identity()
    if norm == "batch":
        return {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[_dims(spatial_dims)](channels)
    return {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[_dims(spatial_dims)](channels, affine=True)


def dropout_layer(spatial_dims: int, p: float) -> nn.Module:
    """Spatial (channel) dropout, or identity when ``p == 0``."""
    if p <= 0:
        return nn.Identity()
    return {2: nn.Dropout2d, 3: nn.Dropout3d}[_dims(spatial_dims)](p)


def _dims(spatial_dims: int) -> int:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    return spatial_dims
