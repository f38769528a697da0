"""Naive 3D neighbourhood attention, for tests: gathers every query's k_d x k_h x k_w keys explicitly.

NATTEN semantics: per axis, a query sees exactly ``k`` keys; the window is centred on it and shifted
inward at the borders (no padding); with dilation ``d`` a query sees only keys of its own residue class
(coordinate mod d), i.e. neighbourhood attention on each residue sub-grid.
"""

from __future__ import annotations

import torch


def window_start(length: int, kernel: int, dilation: int, device=None) -> torch.Tensor:
    """First key coordinate of every query's window on one axis: ``[length]`` (NATTEN's rule)."""
    i = torch.arange(length, device=device)
    r, j = i % dilation, i // dilation
    class_len = (length - r + dilation - 1) // dilation  # positions of residue class r
    start_in_class = torch.clamp(j - kernel // 2, min=0)
    start_in_class = torch.minimum(start_in_class, class_len - kernel)
    return r + dilation * start_in_class


def neighbourhood_index(length: int, kernel: int, dilation: int, device=None) -> torch.Tensor:
    """Key coordinates of every query's window on one axis: ``[length, kernel]``."""
    return window_start(length, kernel, dilation, device)[:, None] + dilation * torch.arange(kernel, device=device)


def local_attn3d_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: tuple[int, int, int],
    dilation: tuple[int, int, int],
    scale: float,
) -> torch.Tensor:
    """``[B, D, H, W, heads, E]`` -> same; memory O(N * kernel volume * E): small inputs only."""
    B, D, H, W, h, e = q.shape
    idx = [neighbourhood_index(n, kk, dd, q.device) for n, kk, dd in zip((D, H, W), kernel_size, dilation)]
    ix = (
        slice(None),
        idx[0][:, None, None, :, None, None],
        idx[1][None, :, None, None, :, None],
        idx[2][None, None, :, None, None, :],
    )
    kk, vv = k[ix], v[ix]  # [B, D, H, W, kd, kh, kw, heads, E]
    scores = (q[:, :, :, :, None, None, None] * kk).sum(-1) * scale  # [B, D, H, W, kd, kh, kw, heads]
    s = scores.flatten(4, 6)  # [B, D, H, W, K, heads]
    attn = torch.softmax(s.to(torch.promote_types(s.dtype, torch.float32)), dim=4).to(q.dtype)
    return (attn[..., None] * vv.flatten(4, 6)).sum(4)
