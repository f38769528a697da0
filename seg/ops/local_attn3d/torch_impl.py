"""The fast CPU path of 3D neighbourhood attention in plain PyTorch.

Queries are cut into blocks of ``4 x 4 x 2`` (D, H, W). A block's windows all lie inside one halo of
``(4 + kd - 1) x (4 + kh - 1) x (2 + kw - 1)`` keys, so a block is one small dense attention over its
halo with an additive mask for the keys outside each query's own window. The dense attention is
PyTorch's fused CPU flash-attention kernel (``aten::_scaled_dot_product_flash_attention_for_cpu`` and
its backward): tiled QK^T, online softmax and PV in one pass, log-sum-exp saved, the backward
recomputing scores from it. What we add is the halo bookkeeping the kernel lacks:

* The blocks of one *line* (same D and H block, every W block) share one gathered key buffer laid out
  W-outermost, ``[W positions, halo_d, halo_h]``. Block ``j``'s halo is then rows ``[2 j * n1, 2 j * n1 +
  (2 + kw - 1) * n1)`` of it (``n1 = halo_d * halo_h``): the kernel reads every block's keys through
  one overlapping strided view (batch stride ``2 * n1`` rows), so keys are gathered once per line
  (~6x the volume at kernel 7), not once per block (~16x).
* On D and H the halo is clamped inside the volume per block (the windows there are shifted inward
  the same way). On W the line is not clamped, so positions ``p < 0`` and ``p >= W`` in front of and
  behind the volume hold the keys that the border queries' inward-shifted windows need
  (``p -> p + kw`` and ``p -> p - kw``); the mask keeps exactly one copy of every key in a block's
  window, so every query sees exactly its NATTEN window.
* The masks depend only on the block's border case on each axis: one ``[W blocks, b^3, halo]``
  additive mask per (D case, H case), built once per shape and broadcast over heads.

Masked keys get -inf: every query has exactly kernel^3 keys inside its window in its block's halo (the
plan asserts it), so no row is fully masked and no guard is needed. (A finite -1e4 leaked masked keys
into the output once scores reached ~1e4: error 2.2 at q, k scaled by 60, where the reference, NATTEN and
the Triton path stay at 1e-4.) Memory is O(N * E) plus one line of keys and the masks, never O(N^2). Dilation runs the
same on each residue sub-grid (coordinates mod d), which is exactly NATTEN's dilated neighbourhood.
Half precision is computed in fp32 (CPU half matmuls are slow and lossy) and cast back.

Why the backward recomputes the scores instead of saving the probabilities P from the forward: saving P
means giving up the fused forward for plain matmuls + softmax over materialized ``[b^3, halo]`` score
blocks (420 MB at 32^3, kernel 7, 4 heads). Measured at 32^3: that forward 0.70 s + its backward 0.79 s
against the fused 0.28 s + 0.80 s in the same process, so the fused pair is faster in total even though its backward is
~3x its forward (5 matmul passes over the halo against 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from seg.ops.local_attn3d.reference import window_start

BLOCK = (4, 4, 2)  # query block (D, H, W): the fastest of 14 shapes tried at 32^3, kernel 7 (4x4x4 was 1.3x slower)
MASKED = float("-inf")
# the size of a row's log-sum-exp above which the backward recomputes its softmax exactly (see _backward): the
# fused kernel's error grows with the logits (~|S| x 6e-8 on dv); under 100 it stays within the 16x of a float32
# brute force's error the tests hold every gradient to (docs/networks.md)
EXACT_ABOVE = 100.0
_FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_FLASH_BWD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


@dataclass(frozen=True)
class _Axis:
    """One clamped axis (D or H): every block's halo starts inside the volume."""

    length: int
    block: int
    n: int  # blocks
    halo: int
    idx: torch.Tensor  # [n, halo] key coordinate of each halo position
    case: torch.Tensor  # [n] border case of each block (blocks of one case share one mask)
    masks: torch.Tensor  # [cases, block, halo] key inside the query's window


def _block_windows(length: int, kernel: int, block: int) -> tuple[int, int, torch.Tensor]:
    """``(block, blocks, window start of every query [blocks, block])``; padded queries repeat the last."""
    b = min(block, length)
    n = math.ceil(length / b)
    qi = (torch.arange(n)[:, None] * b + torch.arange(b)).clamp(max=length - 1)
    return b, n, window_start(length, kernel, 1)[qi]


def _clamped_axis(length: int, kernel: int, block: int) -> _Axis:
    b, n, st = _block_windows(length, kernel, block)
    halo = min(b + kernel - 1, length)
    idx = st[:, :1].clamp(max=length - halo) + torch.arange(halo)
    inside = (idx[:, None, :] >= st[:, :, None]) & (idx[:, None, :] < st[:, :, None] + kernel)
    masks, case = torch.unique(inside, dim=0, return_inverse=True)
    return _Axis(length, b, n, halo, idx, case, masks)


@dataclass(frozen=True)
class _Line:
    """The shared axis (W): one key buffer per line, every block reading a strided window of it."""

    length: int
    block: int
    n: int
    span: int  # halo positions per block: block + kernel - 1
    key: torch.Tensor  # [n * block + kernel - 1] key coordinate behind each line position
    mask: torch.Tensor  # [n, block, span] key inside the query's window, counted once


def _line_axis(length: int, kernel: int, block: int) -> _Line:
    b, n, st = _block_windows(length, kernel, block)
    r, span = kernel // 2, b + kernel - 1
    pos = torch.arange(b * (n - 1) + span) - r
    # in front of / behind the volume: the keys an inward-shifted border window needs (checked below)
    key = torch.where(pos < 0, pos + kernel, torch.where(pos >= length, pos - kernel, pos)).clamp(0, length - 1)
    natural = (pos >= 0) & (pos < length)
    mask = torch.zeros(n, b, span, dtype=torch.bool)
    for j in range(n):
        keys, nat = key[j * b : j * b + span], natural[j * b : j * b + span]
        once = nat.clone()  # every key at most once per block: its own position if present, else its first copy
        seen = set(keys[nat].tolist())
        for p in range(span):
            if not nat[p] and int(keys[p]) not in seen:
                once[p] = True
                seen.add(int(keys[p]))
        mask[j] = once & (keys >= st[j][:, None]) & (keys < st[j][:, None] + kernel)
    if not bool((mask.sum(-1) == kernel).all()):  # pragma: no cover - a broken halo rule must not pass silently
        raise AssertionError(f"local_attn3d: line halo misses keys (length {length}, kernel {kernel}, block {b})")
    return _Line(length, b, n, span, key, mask)


class _Plan:
    """Index bookkeeping for one (volume, kernel) shape; cached, it is reused by every call and layer."""

    def __init__(self, dhw: tuple[int, int, int], kernel: tuple[int, int, int]):
        (D, H, W), (kd, kh, kw) = dhw, kernel
        self.ad, self.ah = _clamped_axis(D, kd, BLOCK[0]), _clamped_axis(H, kh, BLOCK[1])
        self.aw = _line_axis(W, kw, BLOCK[2])
        ad, ah, aw = self.ad, self.ah, self.aw
        self.b3 = ad.block * ah.block * aw.block
        self.n1 = ad.halo * ah.halo  # keys per line position
        self.halo = aw.span * self.n1
        self.padded = (ad.n * ad.block, ah.n * ah.block, aw.n * aw.block)
        # key rows of every line, W-outermost: [nd, nh, line positions * n1]
        plane = (ad.idx[:, None, :, None] * H + ah.idx[None, :, None, :]) * W  # [nd, nh, hd, hh]
        self.line_rows = (aw.key[None, None, :, None, None] + plane[:, :, None]).reshape(ad.n, ah.n, -1)
        self._masks: dict[tuple[int, int, torch.dtype], torch.Tensor] = {}

    def mask(self, i: int, j: int, dtype: torch.dtype) -> torch.Tensor:
        """Additive mask ``[W blocks, 1, b^3, halo]`` of line (D block i, H block j).

        Queries are ordered (d, h, w), keys (w, d, h)."""
        key = (int(self.ad.case[i]), int(self.ah.case[j]), dtype)
        m = self._masks.get(key)
        if m is None:
            md, mh, mw = self.ad.masks[key[0]], self.ah.masks[key[1]], self.aw.mask
            inside = (
                md[None, :, None, None, None, :, None]
                & mh[None, None, :, None, None, None, :]
                & mw[:, None, None, :, :, None, None]
            )
            inside = inside.reshape(self.aw.n, 1, self.b3, self.halo)
            m = self._masks[key] = torch.zeros(inside.shape, dtype=dtype).masked_fill_(~inside, MASKED)
        return m

    def blocks(self, x: torch.Tensor, pad: float = 0.0) -> torch.Tensor:
        """``[B, D, H, W, h, e]`` -> query blocks ``[B, nd, nh, nw, h, b^3, e]`` (one copy, padded with ``pad``)."""
        B, D, H, W, h, e = x.shape
        (Dp, Hp, Wp), ad, ah, aw = self.padded, self.ad, self.ah, self.aw
        if (D, H, W) != (Dp, Hp, Wp):
            x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, Wp - W, 0, Hp - H, 0, Dp - D), value=pad)
        x = x.reshape(B, ad.n, ad.block, ah.n, ah.block, aw.n, aw.block, h, e).permute(0, 1, 3, 5, 7, 2, 4, 6, 8)
        return x.reshape(B, ad.n, ah.n, aw.n, h, self.b3, e)

    def unblock(self, t: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`blocks`, cropped to the volume: ``[B, D, H, W, h, e]`` (contiguous)."""
        B, h, e = t.shape[0], t.shape[4], t.shape[6]
        ad, ah, aw = self.ad, self.ah, self.aw
        t = t.reshape(B, ad.n, ah.n, aw.n, h, ad.block, ah.block, aw.block, e).permute(0, 1, 5, 2, 6, 3, 7, 4, 8)
        t = t.reshape(B, *self.padded, h, e)
        return t[:, : ad.length, : ah.length, : aw.length].contiguous()

    def halo_view(self, line: torch.Tensor, heads: int) -> torch.Tensor:
        """Gathered line ``[positions * n1, h * e]`` -> every block's halo ``[nw, h, halo, e]`` (overlapping view)."""
        e = line.shape[1] // heads
        step = self.aw.block * self.n1 * line.shape[1]
        return line.as_strided((self.aw.n, heads, self.halo, e), (step, e, line.shape[1], 1))

    def add_halos(self, g: torch.Tensor, line: torch.Tensor) -> None:
        """Sum per-block halo gradients ``[nw, h, halo, e]`` into the line buffer ``[positions * n1, h * e]``.

        Blocks ``span // block + 1`` apart do not overlap, so each pass is one strided in-place add."""
        nw, h, L, e = g.shape
        stride = self.aw.block * self.n1 * h * e
        every = -(-self.aw.span // self.aw.block)
        for s in range(min(every, nw)):
            m = len(range(s, nw, every))
            dst = line.as_strided((m, L, h, e), (stride * every, h * e, e, 1), s * stride)
            dst.add_(g[s::every].transpose(1, 2))


@lru_cache(maxsize=32)
def _plan(dhw: tuple[int, int, int], kernel: tuple[int, int, int]) -> _Plan:
    return _Plan(dhw, kernel)


def _lines(plan: _Plan, k: torch.Tensor, v: torch.Tensor, heads: int):
    """Every line ``(b, i, j)`` with its key rows, gathered key/value halos ``[nw, h, halo, e]`` and mask."""
    B = k.shape[0]
    kr, vr = k.reshape(B, -1, k.shape[4] * k.shape[5]), v.reshape(B, -1, v.shape[4] * v.shape[5])
    for b in range(B):
        for i in range(plan.ad.n):
            for j in range(plan.ah.n):
                rows = plan.line_rows[i, j]
                kh = plan.halo_view(kr[b].index_select(0, rows), heads)
                vh = plan.halo_view(vr[b].index_select(0, rows), heads)
                yield (b, i, j), rows, kh, vh, plan.mask(i, j, k.dtype).expand(-1, heads, -1, -1)


def _forward(q, k, v, plan: _Plan, scale: float):
    """One residue grid: ``(out, lse)`` in block layout ``[B, nd, nh, nw, h, b^3, e]`` and ``[..., b^3]``."""
    qb = plan.blocks(q)
    out = torch.empty_like(qb)
    lse = qb.new_empty(qb.shape[:-1])
    for line, _, kh, vh, mask in _lines(plan, k, v, q.shape[4]):
        out[line], lse[line] = _FLASH(qb[line], kh, vh, attn_mask=mask, scale=scale)
    return out, lse


def _exact_line_backward(dob, qb, kh, vh, mask, scale: float):
    """One line's gradients from its own recomputed scores, the softmax normalised over them (``dq``, halo
    ``dk``, halo ``dv``). At large logits a score recomputed in another order differs from the forward's by
    ~|S| x 1e-7, and ``exp(S - lse)`` with the forward's log-sum-exp is then off by that much in its exponent
    (dv 28 % off at logits of 1e6); a softmax of the recomputed scores themselves sums to 1, as the float64
    reference's does."""
    s = torch.matmul(qb, kh.transpose(-1, -2)) * scale + mask
    p = torch.softmax(s, -1)
    gv = torch.matmul(p.transpose(-1, -2), dob)
    dp = torch.matmul(dob, vh.transpose(-1, -2))
    ds = p * (dp - (p * dp).sum(-1, keepdim=True))
    return torch.matmul(ds, kh) * scale, torch.matmul(ds.transpose(-1, -2), qb) * scale, gv


def _backward(do, q, k, v, out, lse, plan: _Plan, scale: float):
    """One residue grid; ``out``, ``lse`` in block layout. Returns dq, dk, dv ``[B, D, H, W, h, e]``.

    Logits up to ``EXACT_ABOVE`` in size (every training run seen) take PyTorch's fused flash backward, which
    recomputes the probabilities from the saved log-sum-exp; larger ones take :func:`_exact_line_backward`
    (the saved log-sum-exp tells which: it is the largest score of its row, give or take log(window))."""
    qb, dob = plan.blocks(q), plan.blocks(do)
    dq = torch.empty_like(qb)
    he = k.shape[4] * k.shape[5]
    dk, dv = (torch.zeros_like(t).view(t.shape[0], -1, he) for t in (k, v))
    finite = lse[torch.isfinite(lse) & (lse.abs() < torch.finfo(lse.dtype).max / 2)]
    exact = finite.numel() > 0 and float(finite.abs().max()) > EXACT_ABOVE
    for line, rows, kh, vh, mask in _lines(plan, k, v, q.shape[4]):
        if exact:
            dq[line], gk, gv = _exact_line_backward(dob[line], qb[line], kh, vh, mask, scale)
        else:
            dq[line], gk, gv = _FLASH_BWD(
                dob[line], qb[line], kh, vh, out[line], lse[line], 0.0, False, attn_mask=mask, scale=scale
            )
        for g, dst in ((gk, dk), (gv, dv)):
            buf = g.new_zeros(len(rows), he)
            plan.add_halos(g, buf)
            dst[line[0]].index_add_(0, rows, buf)
    return plan.unblock(dq), dk.view(k.shape), dv.view(v.shape)


def _residue_grids(dilation: tuple[int, int, int]):
    """Index of each residue sub-grid (coordinates mod d): dilated attention is plain attention on each."""
    dd, dh, dw = dilation
    for rd in range(dd):
        for rh in range(dh):
            for rw in range(dw):
                yield slice(None), slice(rd, None, dd), slice(rh, None, dh), slice(rw, None, dw)


def _fp32(*ts: torch.Tensor) -> list[torch.Tensor]:
    """CPU half matmuls are slow and lossy: compute in fp32."""
    return [t.float() if t.dtype in (torch.float16, torch.bfloat16) else t for t in ts]


def _over_grids(tensors: tuple[torch.Tensor, ...], kernel: tuple[int, int, int], dilation: tuple[int, int, int], step):
    """``step(plan, *tensors)`` on each residue grid of ``tensors`` ``[B, D, H, W, ...]``; its results
    (volume layout) are stitched back into full-size tensors (no copy without dilation)."""
    grids = list(_residue_grids(dilation))
    results = None
    for sl in grids:
        parts = [x[sl].contiguous() for x in tensors]
        out = step(_plan(tuple(parts[0].shape[1:4]), kernel), *parts)
        if len(grids) == 1:
            return out
        if results is None:
            results = [o.new_empty(tensors[0].shape[:4] + o.shape[4:]) for o in out]
        for r, o in zip(results, out):
            r[sl] = o
    return tuple(results)


def local_attn3d_torch_forward(q, k, v, kernel_size, dilation, scale) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out [B, D, H, W, heads, E] in q's dtype, log-sum-exp [B, D, H, W, heads] fp32)``, no autograd."""
    dtype, (q, k, v) = q.dtype, _fp32(q, k, v)

    def step(plan, q, k, v):
        ob, lb = _forward(q, k, v, plan, scale)
        return plan.unblock(ob), plan.unblock(lb.unsqueeze(-1)).squeeze(-1)

    out, lse = _over_grids((q, k, v), tuple(kernel_size), tuple(dilation), step)
    return out.to(dtype), lse


def local_attn3d_torch_backward(do, q, k, v, out, lse, kernel_size, dilation, scale):
    """Gradients ``(dq, dk, dv)`` from the saved output and log-sum-exp, in q's dtype."""
    dtype, (do, q, k, v, out) = q.dtype, _fp32(do, q, k, v, out)

    def step(plan, do, q, k, v, out, lse):
        # padded queries get lse = +max: their P = exp(S - lse) is exactly 0 (never exp(S) * 0 = nan)
        lb = plan.blocks(lse.unsqueeze(-1), pad=torch.finfo(lse.dtype).max).squeeze(-1)
        return _backward(do, q, k, v, plan.blocks(out), lb, plan, scale)

    grads = _over_grids((do, q, k, v, out, lse), tuple(kernel_size), tuple(dilation), step)
    return tuple(g.to(dtype) for g in grads)
