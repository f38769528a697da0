"""The fast CPU path of 3D neighbourhood attention in plain PyTorch.

Queries are cut into blocks of b^3 (b = 4); a block's windows all lie inside one halo of (b + k - 1)^3
keys, so one block is two batched matmuls ([b^3, E] x [E, halo] and back) with an additive mask for
the keys outside each query's own window. Blocks whose windows are clamped the same way (all interior
blocks, and one group per border case) share one mask, so blocks are processed group by group in
chunks of a few blocks: the mask is one small ``[b^3, halo]`` tensor broadcast into ``baddbmm`` and the
scores of a chunk stay in the CPU's cache (the softmax over them is then cheap). Memory is O(N * E)
plus one chunk of scores, never O(N^2) and never O(N * halo) at once. Masked keys get -1e4, not -inf:
the fused softmax is fast on finite inputs, and exp(-1e4 - max) is exactly 0.

The backward recomputes scores and probabilities chunk by chunk (nothing but O is saved) and scatters
key/value gradients back with ``index_add_``. Dilation runs the same on each residue sub-grid
(coordinates mod d), which is exactly NATTEN's dilated neighbourhood.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from seg.ops.local_attn3d.reference import window_start

CHUNK_BYTES = 2**20  # scores per chunk (~one block x 4 heads): small enough to stay in cache during the softmax
MASKED = -1.0e4


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
    def __init__(self, shape, kernel, block, device, dtype=torch.float32):
        B, D, H, W, h, e = shape
        self.B, self.h, self.e = B, h, e
        self.ax = [_axis(L, k, block, device) for L, k in zip((D, H, W), kernel)]
        ad, ah, aw = self.ax
        self.b3 = ad.block * ah.block * aw.block
        self.h3 = ad.halo * ah.halo * aw.halo
        self.plane = ah.n * aw.n
        self.padded = (ad.n * ad.block, ah.n * ah.block, aw.n * aw.block)
        H, W = ah.length, aw.length
        # flat key index of every block's halo, [blocks, halo^3], for one index_select per chunk
        flat = (ad.idx[:, None, None, :, None, None] * H + ah.idx[None, :, None, None, :, None]) * W \
            + aw.idx[None, None, :, None, None, :]
        self.halo_idx = flat.reshape(ad.n * self.plane, self.h3)
        self.batch_offsets = torch.arange(B, device=device) * (ad.length * ah.length * aw.length)
        self.per_chunk = max(1, CHUNK_BYTES // (B * h * self.b3 * self.h3 * 4))
        self.groups = self._groups(dtype)

    def _groups(self, dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Blocks grouped by their window mask: ``[(block ids, additive mask [b^3, halo^3])]``."""
        per_axis = []
        for a in self.ax:
            uniq, inv = torch.unique(a.mask.reshape(a.n, -1), dim=0, return_inverse=True)
            per_axis.append((uniq.reshape(-1, a.block, a.halo), inv))
        (ud, td), (uh, th), (uw, tw) = per_axis
        tid = ((td[:, None, None] * len(uh) + th[None, :, None]) * len(uw) + tw[None, None, :]).flatten()
        groups = []
        for t in torch.unique(tid).tolist():
            i, rest = divmod(t, len(uh) * len(uw))
            j, l = divmod(rest, len(uw))
            inside = (ud[i][:, None, None, :, None, None] & uh[j][None, :, None, None, :, None]
                      & uw[l][None, None, :, None, None, :]).reshape(self.b3, self.h3)
            bias = torch.zeros(self.b3, self.h3, dtype=dtype, device=inside.device).masked_fill_(~inside, MASKED)
            groups.append((torch.nonzero(tid == t).flatten(), bias))
        return groups

    def chunks(self):
        """``(block ids, additive mask)`` per chunk: every block exactly once."""
        for sel, bias in self.groups:
            for i in range(0, len(sel), self.per_chunk):
                yield sel[i:i + self.per_chunk], bias

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        D, H, W = x.shape[1:4]
        Dp, Hp, Wp = self.padded
        if (D, H, W) == (Dp, Hp, Wp):
            return x
        return torch.nn.functional.pad(x, (0, 0, 0, 0, 0, Wp - W, 0, Hp - H, 0, Dp - D))

    def blocks(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, D, H, W, h, e]`` -> padded query blocks ``[B*h, blocks, b^3, e]`` (one copy)."""
        ad, ah, aw = self.ax
        x = self.pad(x).reshape(self.B, ad.n, ad.block, ah.n, ah.block, aw.n, aw.block, self.h, self.e)
        x = x.permute(0, 7, 1, 3, 5, 2, 4, 6, 8)
        return x.reshape(self.B * self.h, ad.n * self.plane, self.b3, self.e)

    def unblock(self, t: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`blocks`, cropped to the volume: ``[B, D, H, W, h, e]`` (contiguous)."""
        ad, ah, aw = self.ax
        t = t.reshape(self.B, self.h, ad.n, ah.n, aw.n, ad.block, ah.block, aw.block, self.e)
        t = t.permute(0, 2, 5, 3, 6, 4, 7, 1, 8)
        t = t.reshape(self.B, ad.n * ad.block, ah.n * ah.block, aw.n * aw.block, self.h, self.e)
        return t[:, :ad.length, :ah.length, :aw.length].contiguous()

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, D, H, W, h, e]`` -> ``[B*N, h*e]``: one row per voxel, all heads (a view of contiguous input)."""
        return x.reshape(-1, self.h * self.e)

    def row_index(self, sel: torch.Tensor) -> torch.Tensor:
        """Rows of ``[B*N, h*e]`` that make up the halos of blocks ``sel`` (computed once per chunk)."""
        idx = self.halo_idx[sel].flatten()
        return idx if self.B == 1 else (self.batch_offsets[:, None] + idx).flatten()

    def halo(self, rows: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Key/value rows ``[B*N, h*e]`` at ``idx`` (:meth:`row_index`) -> halos ``[B*h*blocks, halo^3, e]``.

        The gather runs over whole voxel rows (all heads, dim 0): PyTorch's CPU ``index_select`` along
        dim 0 is ~80x faster than along an inner dim of a ``[B*h, N, e]`` layout; one permute follows.
        """
        g = rows.index_select(0, idx).view(self.B, -1, self.h3, self.h, self.e)
        return g.permute(0, 3, 1, 2, 4).reshape(-1, self.h3, self.e)

    def scatter_halo(self, g: torch.Tensor, out_rows: torch.Tensor, idx: torch.Tensor) -> None:
        """Add halo gradients ``[B*h*blocks, halo^3, e]`` back into rows ``out_rows [B*N, h*e]`` at ``idx``."""
        g = g.view(self.B, self.h, -1, self.h3, self.e).permute(0, 2, 3, 1, 4).reshape(-1, self.h * self.e)
        out_rows.index_add_(0, idx, g)


def _forward(q, k, v, plan: _Plan, scale: float):
    qb_all = plan.blocks(q) * scale  # never in place: blocks() may be a view of q
    k, v = plan.rows(k), plan.rows(v)
    out = torch.empty_like(qb_all)
    Bh, b3, e = qb_all.shape[0], plan.b3, plan.e
    for sel, bias in plan.chunks():
        idx = plan.row_index(sel)
        s = torch.baddbmm(bias, qb_all[:, sel].reshape(-1, b3, e), plan.halo(k, idx).transpose(1, 2))
        out[:, sel] = torch.bmm(torch.softmax(s, -1), plan.halo(v, idx)).view(Bh, -1, b3, e)
    return plan.unblock(out)


def _backward(do, q, k, v, out, plan: _Plan, scale: float):
    qb_all = plan.blocks(q) * scale  # never in place: blocks() may be a view of q
    do_all = plan.blocks(do)
    delta = (do_all * plan.blocks(out)).sum(-1)  # rowsum(dO * O) per query, [B*h, blocks, b^3]
    dq = torch.empty_like(qb_all)
    k, v = plan.rows(k), plan.rows(v)
    dk, dv = torch.zeros_like(k), torch.zeros_like(v)
    Bh, b3, e = qb_all.shape[0], plan.b3, plan.e
    for sel, bias in plan.chunks():
        qb, dob = qb_all[:, sel].reshape(-1, b3, e), do_all[:, sel].reshape(-1, b3, e)
        idx = plan.row_index(sel)
        kb, vb = plan.halo(k, idx), plan.halo(v, idx)
        # recompute P with the fused softmax: on a cache-resident chunk it is as cheap as exp(S - lse) and
        # avoids the slow exp path of the masked entries, so the forward saves no log-sum-exp at all
        p = torch.softmax(torch.baddbmm(bias, qb, kb.transpose(1, 2)), -1)
        plan.scatter_halo(torch.bmm(p.transpose(1, 2), dob), dv, idx)
        ds = p.mul_(torch.bmm(dob, vb.transpose(1, 2)).sub_(delta[:, sel].reshape(-1, b3, 1)))
        dq[:, sel] = torch.bmm(ds, kb).view(Bh, -1, b3, e)
        plan.scatter_halo(torch.bmm(ds.transpose(1, 2), qb), dk, idx)  # qb is scaled: dK = scale * dS^T Q
    return plan.unblock(dq.mul_(scale)), dk.view(q.shape), dv.view(q.shape)


class _BlockedNeighbourhoodAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, kernel, scale, block):
        plan = _Plan(q.shape, kernel, block, q.device, q.dtype)
        out = _forward(q, k, v, plan, scale)
        ctx.save_for_backward(q, k, v, out)
        ctx.plan, ctx.scale = plan, scale
        return out

    @staticmethod
    def backward(ctx, do):
        q, k, v, out = ctx.saved_tensors
        dq, dk, dv = _backward(do.contiguous(), q, k, v, out, ctx.plan, ctx.scale)
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
