"""The fast CPU path of 3D neighbourhood attention in plain PyTorch.

Queries are cut into blocks of b^3; a block's windows all lie inside one halo of (b + k - 1)^3 keys, so
one block is two batched matmuls ([b^3, E] x [E, halo] and back) with a mask for the keys outside each
query's own window. Blocks are processed a few D-rows at a time, so memory is O(N * E) plus one chunk
of scores, never O(N^2) and never O(N * halo) at once. The backward recomputes the scores from the
saved log-sum-exp (as FlashAttention-2 does) chunk by chunk and scatters key/value gradients back with
``index_add_``. Dilation runs the same on each residue sub-grid (coordinates mod d), which is exactly
NATTEN's dilated neighbourhood.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from seg.ops.local_attn3d.reference import window_start

CHUNK_BYTES = 64 * 2**20  # scores per chunk


@dataclass
class _Axis:
    length: int
    kernel: int
    block: int
    n: int  # blocks
    halo: int
    idx: torch.Tensor  # [n, halo] key coordinates of each block's halo
    mask: torch.Tensor  # [n, block, halo] key inside the query's window


def _axis(length: int, kernel: int, block: int, device) -> _Axis:
    b = min(block, length)
    n = math.ceil(length / b)
    halo = min(b + kernel - 1, length)
    qi = (torch.arange(n, device=device)[:, None] * b + torch.arange(b, device=device)).clamp(max=length - 1)  # [n, b]
    st = window_start(length, kernel, 1, device)[qi]  # [n, b]
    hs = st[:, 0].clamp(max=length - halo)  # [n]
    idx = hs[:, None] + torch.arange(halo, device=device)  # [n, halo]
    mask = (idx[:, None, :] >= st[:, :, None]) & (idx[:, None, :] < st[:, :, None] + kernel)
    return _Axis(length, kernel, b, n, halo, idx, mask)


class _Plan:
    def __init__(self, shape, kernel, block, device):
        B, D, H, W, h, e = shape
        self.B, self.h, self.e = B, h, e
        self.ax = [_axis(L, k, block, device) for L, k in zip((D, H, W), kernel)]
        ad, ah, aw = self.ax
        self.b3 = ad.block * ah.block * aw.block
        self.h3 = ad.halo * ah.halo * aw.halo
        self.plane = ah.n * aw.n
        per_row = B * h * self.plane * self.b3 * self.h3 * 4
        self.rows = max(1, CHUNK_BYTES // max(per_row, 1))
        self.padded = (ad.n * ad.block, ah.n * ah.block, aw.n * aw.block)
        self._mask = None
        H, W = ah.length, aw.length
        # flat key index of every block's halo, [blocks, halo^3], for one index_select per chunk
        flat = (ad.idx[:, None, None, :, None, None] * H + ah.idx[None, :, None, None, :, None]) * W \
            + aw.idx[None, None, :, None, None, :]
        self.halo_idx = flat.reshape(ad.n * self.plane, self.h3)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        D, H, W = x.shape[1:4]
        Dp, Hp, Wp = self.padded
        if (D, H, W) == (Dp, Hp, Wp):
            return x
        return torch.nn.functional.pad(x, (0, 0, 0, 0, 0, Wp - W, 0, Hp - H, 0, Dp - D))

    def chunks(self):
        n = self.ax[0].n
        for n0 in range(0, n, self.rows):
            yield n0, min(n, n0 + self.rows)

    def q_blocks(self, xp: torch.Tensor, n0: int, n1: int) -> torch.Tensor:
        """Padded ``[B, Dp, Hp, Wp, h, e]`` rows n0:n1 -> ``[B*h, blocks, b^3, e]``."""
        ad, ah, aw = self.ax
        x = xp[:, n0 * ad.block:n1 * ad.block]
        x = x.reshape(self.B, n1 - n0, ad.block, ah.n, ah.block, aw.n, aw.block, self.h, self.e)
        x = x.permute(0, 7, 1, 3, 5, 2, 4, 6, 8)
        return x.reshape(self.B * self.h, (n1 - n0) * self.plane, self.b3, self.e)

    def unblock(self, t: torch.Tensor, n0: int, n1: int) -> torch.Tensor:
        """Inverse of :meth:`q_blocks`: ``[B*h, blocks, b^3, e]`` -> ``[B, rows*bd, Hp, Wp, h, e]``."""
        ad, ah, aw = self.ax
        t = t.reshape(self.B, self.h, n1 - n0, ah.n, aw.n, ad.block, ah.block, aw.block, self.e)
        t = t.permute(0, 2, 5, 3, 6, 4, 7, 1, 8)
        return t.reshape(self.B, (n1 - n0) * ad.block, ah.n * ah.block, aw.n * aw.block, self.h, self.e)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, D, H, W, h, e]`` -> ``[B*h, N, e]`` (one copy per call)."""
        B, D, H, W, h, e = x.shape
        return x.permute(0, 4, 1, 2, 3, 5).reshape(B * h, D * H * W, e)

    def untokens(self, t: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`tokens`."""
        D, H, W = (a.length for a in self.ax)
        return t.reshape(self.B, self.h, D, H, W, self.e).permute(0, 2, 3, 4, 1, 5)

    def halo(self, xt: torch.Tensor, n0: int, n1: int) -> torch.Tensor:
        """Key/value tokens ``[B*h, N, e]`` -> each block's halo ``[B*h, blocks, halo^3, e]``."""
        idx = self.halo_idx[n0 * self.plane:n1 * self.plane]
        return xt.index_select(1, idx.flatten()).reshape(xt.shape[0], idx.shape[0], self.h3, self.e)

    def scatter_halo(self, g: torch.Tensor, out_t: torch.Tensor, n0: int, n1: int) -> None:
        """Add halo gradients ``[B*h, blocks, halo^3, e]`` back into tokens ``out_t [B*h, N, e]``."""
        idx = self.halo_idx[n0 * self.plane:n1 * self.plane]
        out_t.index_add_(1, idx.flatten(), g.reshape(g.shape[0], -1, self.e))

    def mask(self, n0: int, n1: int) -> torch.Tensor:
        """Keys outside each query's window (True = outside), built once per plan: ``[blocks, b^3, halo^3]``."""
        if self._mask is None:
            ad, ah, aw = self.ax
            m = (ad.mask[:, None, None, :, None, None, :, None, None]
                 & ah.mask[None, :, None, None, :, None, None, :, None]
                 & aw.mask[None, None, :, None, None, :, None, None, :])
            self._mask = ~m.reshape(ad.n * self.plane, self.b3, self.h3)
        return self._mask[n0 * self.plane:n1 * self.plane]


def _probabilities(s: torch.Tensor, outside: torch.Tensor, shift: torch.Tensor | None = None):
    """In-place masked softmax numerator of scores ``s``; returns (p, row max) or p when ``shift`` (lse) is given.

    Keys outside the window are set to a finite floor instead of -inf and zeroed after the exp: exp of
    -inf, and of arguments whose results are denormal, take a slow path on x86 (2-20x slower here).
    """
    inside = (~outside).to(s.dtype)  # once per chunk, shared by every batch x head (broadcast below)
    s.add_(inside.sub(1.0).mul_(1e4))
    mx = s.amax(-1, keepdim=True) if shift is None else shift
    p = s.sub_(mx).clamp_(min=-60.0).exp_().mul_(inside)
    return p if shift is not None else (p, mx)


def _forward(q, k, v, plan: _Plan, scale: float):
    qp = plan.pad(q)
    k, v = plan.tokens(k), plan.tokens(v)
    out = torch.empty_like(qp)
    lse = torch.empty(plan.B * plan.h, plan.ax[0].n * plan.plane, plan.b3, dtype=q.dtype, device=q.device)
    for n0, n1 in plan.chunks():
        qb, kb, vb = plan.q_blocks(qp, n0, n1), plan.halo(k, n0, n1), plan.halo(v, n0, n1)
        s = torch.matmul(qb, kb.transpose(-1, -2)).mul_(scale)
        p, mx = _probabilities(s, plan.mask(n0, n1))
        den = p.sum(-1, keepdim=True)
        o = torch.matmul(p, vb).div_(den)
        out[:, n0 * plan.ax[0].block:n1 * plan.ax[0].block] = plan.unblock(o, n0, n1)
        r0, r1 = n0 * plan.plane, n1 * plan.plane
        lse[:, r0:r1] = (mx + den.log()).squeeze(-1)
    D, H, W = q.shape[1:4]
    return out[:, :D, :H, :W].contiguous(), lse


def _backward(do, q, k, v, out, lse, plan: _Plan, scale: float):
    qp, dop, op = plan.pad(q), plan.pad(do), plan.pad(out)
    dq = torch.zeros_like(qp)
    k, v = plan.tokens(k), plan.tokens(v)
    dk, dv = torch.zeros_like(k), torch.zeros_like(v)
    for n0, n1 in plan.chunks():
        qb, kb, vb = plan.q_blocks(qp, n0, n1), plan.halo(k, n0, n1), plan.halo(v, n0, n1)
        dob, ob = plan.q_blocks(dop, n0, n1), plan.q_blocks(op, n0, n1)
        s = torch.matmul(qb, kb.transpose(-1, -2)).mul_(scale)
        p = _probabilities(s, plan.mask(n0, n1), lse[:, n0 * plan.plane:n1 * plan.plane, :, None])  # normalised
        dvb = torch.matmul(p.transpose(-1, -2), dob)
        dp = torch.matmul(dob, vb.transpose(-1, -2))
        ds = p.mul_(dp.sub_((dob * ob).sum(-1, keepdim=True)))
        dqb = torch.matmul(ds, kb).mul_(scale)
        dkb = torch.matmul(ds.transpose(-1, -2), qb).mul_(scale)
        dq[:, n0 * plan.ax[0].block:n1 * plan.ax[0].block] = plan.unblock(dqb, n0, n1)
        plan.scatter_halo(dkb, dk, n0, n1)
        plan.scatter_halo(dvb, dv, n0, n1)
    D, H, W = q.shape[1:4]
    return dq[:, :D, :H, :W].contiguous(), plan.untokens(dk), plan.untokens(dv)


class _BlockedNeighbourhoodAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, kernel, scale, block):
        plan = _Plan(q.shape, kernel, block, q.device)
        out, lse = _forward(q, k, v, plan, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.plan, ctx.scale = plan, scale
        return out

    @staticmethod
    def backward(ctx, do):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _backward(do.contiguous(), q, k, v, out, lse, ctx.plan, ctx.scale)
        return dq, dk, dv, None, None, None


def local_attn3d_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: tuple[int, int, int],
                       dilation: tuple[int, int, int], scale: float, block: int = 4) -> torch.Tensor:
    """``[B, D, H, W, heads, E]`` -> same (arguments already checked by :func:`local_attn3d`)."""
    dtype = q.dtype
    if dtype in (torch.float16, torch.bfloat16):  # CPU half matmuls are slow and lossy: compute in fp32
        q, k, v = q.float(), k.float(), v.float()
    if dilation == (1, 1, 1):
        out = _BlockedNeighbourhoodAttention.apply(q.contiguous(), k.contiguous(), v.contiguous(), tuple(kernel_size), scale, block)
        return out.to(dtype)
    dd, dh, dw = dilation
    parts = []
    for rd in range(dd):
        for rh in range(dh):
            for rw in range(dw):
                sl = (slice(None), slice(rd, None, dd), slice(rh, None, dh), slice(rw, None, dw))
                parts.append((sl, _BlockedNeighbourhoodAttention.apply(q[sl].contiguous(), k[sl].contiguous(),
                                                                       v[sl].contiguous(), tuple(kernel_size), scale, block)))
    out = q.new_empty(q.shape)
    for sl, o in parts:
        out[sl] = o
    return out.to(dtype)
