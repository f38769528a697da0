"""Fused 3D neighbourhood attention in Triton: forward, dQ and dK/dV kernels, then their launchers.

A program owns a 3D tile of queries (TD x TH x TW) of one (batch, head). Its keys lie in the union of
its queries' windows (per axis: from the smallest window start to the largest start + (k - 1) * d);
the program walks that halo in flat chunks of BLOCK_K keys with an online softmax (running max and sum),
masking keys outside each query's own NATTEN window (window start per axis computed in the kernel,
dilation by residue class),
and saves the log-sum-exp. The backward recomputes the scores from it (FlashAttention-2): the dQ kernel
walks the same key halo; the dK/dV kernel owns a key tile and walks the queries within (k - 1) * d of it (a
conservative halo: the inverse window has no closed form with clamped borders).
Where a log-sum-exp exceeds EXACT_ABOVE (logits of ~100 and more) the backward scores in float64 and
normalises each row over its own scores once more (see _scores): its gradients then match float64's.
Tensors are heads-last ``[B, D, H, W, heads, E]`` with arbitrary strides; tails are masked.
On a machine without a GPU the kernels run under TRITON_INTERPRET=1 (tests only: it is slow).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


@triton.jit
def _start(i, L, K: tl.constexpr, DIL: tl.constexpr):
    """NATTEN window start on one axis (vectorised over i)."""
    r = i % DIL
    j = i // DIL
    class_len = (L - r + DIL - 1) // DIL
    s = tl.maximum(j - K // 2, 0)
    s = tl.minimum(s, class_len - K)
    return r + DIL * s


@triton.jit
def _in_window(kc, st, K: tl.constexpr, DIL: tl.constexpr):
    off = kc - st
    return (off >= 0) & (off <= (K - 1) * DIL) & (off % DIL == 0)


@triton.jit
def _tile_coords(pid_t, D, H, W, TD: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr):
    nth = (H + TH - 1) // TH
    ntw = (W + TW - 1) // TW
    td = pid_t // (nth * ntw)
    th = (pid_t // ntw) % nth
    tw = pid_t % ntw
    return td * TD, th * TH, tw * TW


@triton.jit
def _query_tile(pid_t, D, H, W, TD: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr):
    """Coordinates of the program's TD x TH x TW tile (flattened) and which lie inside the volume."""
    d0, h0, w0 = _tile_coords(pid_t, D, H, W, TD, TH, TW)
    i = tl.arange(0, TD * TH * TW)
    cd = d0 + i // (TH * TW)
    ch = h0 + (i // TW) % TH
    cw = w0 + i % TW
    return cd, ch, cw, (cd < D) & (ch < H) & (cw < W)


@triton.jit
def _window_halo(
    st_d,
    st_h,
    st_w,
    KD: tl.constexpr,
    KH: tl.constexpr,
    KW: tl.constexpr,
    DD: tl.constexpr,
    DH: tl.constexpr,
    DW: tl.constexpr,
):
    """The exact union of the tile's windows per axis: lower corner, extents and flat size."""
    lo_d = tl.min(st_d, 0)
    lo_h = tl.min(st_h, 0)
    lo_w = tl.min(st_w, 0)
    n_d = tl.max(st_d, 0) + (KD - 1) * DD + 1 - lo_d
    n_h = tl.max(st_h, 0) + (KH - 1) * DH + 1 - lo_h
    n_w = tl.max(st_w, 0) + (KW - 1) * DW + 1 - lo_w
    return lo_d, lo_h, lo_w, n_h, n_w, n_d * n_h * n_w


@triton.jit
def _halo_index(start, total, lo_d, lo_h, lo_w, n_h, n_w, base, s_d, s_h, s_w, BLOCK: tl.constexpr):
    """The ``BLOCK`` positions from ``start`` of a halo box (origin ``lo_*``, ``n_h`` x ``n_w`` per slice,
    ``total`` in all): which exist, their coordinates and their offsets. The keys a query tile sees and the
    queries a key tile is seen by are both such boxes."""
    i = start + tl.arange(0, BLOCK)
    d = lo_d + i // (n_h * n_w)
    h = lo_h + (i // n_w) % n_h
    w = lo_w + i % n_w
    return i < total, d, h, w, base + d * s_d + h * s_h + w * s_w


# fmt: off
@triton.jit
def _window_mask(
    q_ok, k_ok, kd, kh, kw, st_d, st_h, st_w,
    KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, DD: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
):
    # fmt: on
    """[queries, keys]: both exist and the key lies in the query's window (window starts ``st_*``)."""
    return (
        q_ok[:, None]
        & k_ok[None, :]
        & _in_window(kd[None, :], st_d[:, None], KD, DD)
        & _in_window(kh[None, :], st_h[:, None], KH, DH)
        & _in_window(kw[None, :], st_w[:, None], KW, DW)
    )


# fmt: off
@triton.jit
def _key_block(
    start, total, lo_d, lo_h, lo_w, n_h, n_w, st_d, st_h, st_w, q_ok, base, s_d, s_h, s_w,
    KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, DD: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # fmt: on
    """The ``BLOCK_K`` keys from ``start`` of a query tile's window halo: which exist (``k_ok``), their offsets,
    and which lie in each query's own window (``valid``, [BLOCK_Q, BLOCK_K])."""
    k_ok, kd, kh, kw, k_off = _halo_index(start, total, lo_d, lo_h, lo_w, n_h, n_w, base, s_d, s_h, s_w, BLOCK_K)
    valid = _window_mask(q_ok, k_ok, kd, kh, kw, st_d, st_h, st_w, KD, KH, KW, DD, DH, DW)
    return k_ok, k_off, valid


@triton.jit
def _load_tile(ptrs, mask, UPCAST: tl.constexpr):
    """Load a q/k/v/dO tile; UPCAST (bf16 under TRITON_INTERPRET only) converts it to fp32 on load, since
    the interpreter keeps bf16 as raw uint16 bits and its dot/arithmetic on them is wrong (Triton docs)."""
    x = tl.load(ptrs, mask=mask, other=0.0)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def _scores(q, k, scale, EXACT: tl.constexpr):
    """Scores of a query block against a key block: float32, or float64 in the exact backward. At large logits
    a float32 score depends on the block's shape and the row's place in it (BLAS and MMA tilings sum in
    different orders): an ulp of 1e4 is 1e-3, so a backward whose blocks differ from the forward's recomputes
    probabilities up to 1 % off. In float64 (products of float32 inputs are exact) they agree to 1e-12."""
    if EXACT:  # (also dO.v: in float64, rounded once to float32, it is the same number in both kernels and delta)
        return tl.dot(q.to(tl.float64), tl.trans(k.to(tl.float64))) * scale
    else:
        return tl.dot(q, tl.trans(k)).to(tl.float32) * scale


@triton.jit
def _local_attn3d_fwd(
    Q,
    Kt,
    V,
    O,
    LSE,
    s_b,
    s_d,
    s_h,
    s_w,
    s_n,
    s_e,
    D,
    H,
    W,
    NH,
    E,
    scale,
    KD: tl.constexpr,
    KH: tl.constexpr,
    KW: tl.constexpr,
    DD: tl.constexpr,
    DH: tl.constexpr,
    DW: tl.constexpr,
    TD: tl.constexpr,
    TH: tl.constexpr,
    TW: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_E: tl.constexpr,
    UPCAST: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // NH
    hd = pid_bh % NH
    qd, qh, qw, q_ok = _query_tile(pid_t, D, H, W, TD, TH, TW)
    BLOCK_Q: tl.constexpr = TD * TH * TW
    e = tl.arange(0, BLOCK_E)
    e_ok = e < E
    base = b * s_b + hd * s_n
    q_off = base + qd * s_d + qh * s_h + qw * s_w
    q = _load_tile(Q + q_off[:, None] + e[None, :] * s_e, q_ok[:, None] & e_ok[None, :], UPCAST)
    st_d = _start(tl.minimum(qd, D - 1), D, KD, DD)
    st_h = _start(tl.minimum(qh, H - 1), H, KH, DH)
    st_w = _start(tl.minimum(qw, W - 1), W, KW, DW)
    # tail queries repeat the last one's window, so they do not widen the halo
    lo_d, lo_h, lo_w, n_h, n_w, total = _window_halo(st_d, st_h, st_w, KD, KH, KW, DD, DH, DW)
    m_i = tl.full([BLOCK_Q], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_Q], tl.float32)
    acc = tl.zeros([BLOCK_Q, BLOCK_E], tl.float32)
    for start in range(0, total, BLOCK_K):
        # fmt: off
        k_ok, k_off, valid = _key_block(
            start, total, lo_d, lo_h, lo_w, n_h, n_w, st_d, st_h, st_w, q_ok, base, s_d, s_h, s_w,
            KD, KH, KW, DD, DH, DW, BLOCK_K,
        )
        # fmt: on
        kmask = k_ok[:, None] & e_ok[None, :]
        k = _load_tile(Kt + k_off[:, None] + e[None, :] * s_e, kmask, UPCAST)
        v = _load_tile(V + k_off[:, None] + e[None, :] * s_e, kmask, UPCAST)
        s = tl.dot(q, tl.trans(k)).to(tl.float32) * scale
        s = tl.where(valid, s, -1.0e30)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.where(valid, tl.exp(s - m_new[:, None]), 0.0)
        alpha = tl.exp(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v).to(tl.float32)
        m_i = m_new
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    out = acc / l_safe[:, None]
    tl.store(O + q_off[:, None] + e[None, :] * s_e, out.to(O.dtype.element_ty), mask=q_ok[:, None] & e_ok[None, :])
    lse_off = pid_bh * D * H * W + (qd * H + qh) * W + qw
    tl.store(LSE + lse_off, m_i + tl.log(l_safe), mask=q_ok)


@triton.jit
def _local_attn3d_bwd_dq(
    Q,
    Kt,
    V,
    DO,
    LSE,
    DELTA,
    DQ,
    LNORM,
    s_b,
    s_d,
    s_h,
    s_w,
    s_n,
    s_e,
    D,
    H,
    W,
    NH,
    E,
    scale,
    KD: tl.constexpr,
    KH: tl.constexpr,
    KW: tl.constexpr,
    DD: tl.constexpr,
    DH: tl.constexpr,
    DW: tl.constexpr,
    TD: tl.constexpr,
    TH: tl.constexpr,
    TW: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_E: tl.constexpr,
    UPCAST: tl.constexpr,
    EXACT: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // NH
    hd = pid_bh % NH
    qd, qh, qw, q_ok = _query_tile(pid_t, D, H, W, TD, TH, TW)
    BLOCK_Q: tl.constexpr = TD * TH * TW
    e = tl.arange(0, BLOCK_E)
    e_ok = e < E
    base = b * s_b + hd * s_n
    q_off = base + qd * s_d + qh * s_h + qw * s_w
    qmask = q_ok[:, None] & e_ok[None, :]
    q = _load_tile(Q + q_off[:, None] + e[None, :] * s_e, qmask, UPCAST)
    do = _load_tile(DO + q_off[:, None] + e[None, :] * s_e, qmask, UPCAST)
    row = pid_bh * D * H * W + (qd * H + qh) * W + qw
    lse = tl.load(LSE + row, mask=q_ok, other=0.0)
    delta = tl.load(DELTA + row, mask=q_ok, other=0.0)
    st_d = _start(tl.minimum(qd, D - 1), D, KD, DD)
    st_h = _start(tl.minimum(qh, H - 1), H, KH, DH)
    st_w = _start(tl.minimum(qw, W - 1), W, KW, DW)
    lo_d, lo_h, lo_w, n_h, n_w, total = _window_halo(st_d, st_h, st_w, KD, KH, KW, DD, DH, DW)
    # the exact backward (large logits) normalises each row over its own float64 scores once more: the saved
    # log-sum-exp, a float32, is off by up to an ulp of itself (lnorm, saved for the dK/dV kernel)
    lnorm = tl.full([BLOCK_Q], 1.0, tl.float64)
    if EXACT:
        l2 = tl.zeros([BLOCK_Q], tl.float64)
        for start in range(0, total, BLOCK_K):
            # fmt: off
            k_ok, k_off, valid = _key_block(
                start, total, lo_d, lo_h, lo_w, n_h, n_w, st_d, st_h, st_w, q_ok, base, s_d, s_h, s_w,
                KD, KH, KW, DD, DH, DW, BLOCK_K,
            )
            # fmt: on
            k = _load_tile(Kt + k_off[:, None] + e[None, :] * s_e, k_ok[:, None] & e_ok[None, :], UPCAST)
            s = _scores(q, k, scale, EXACT)
            l2 += tl.sum(tl.where(valid, tl.exp(s - lse.to(tl.float64)[:, None]), 0.0), 1)
        lnorm = tl.where(l2 > 0, l2, 1.0)
        tl.store(LNORM + row, lnorm, mask=q_ok)
    dq = tl.zeros([BLOCK_Q, BLOCK_E], tl.float32)
    for start in range(0, total, BLOCK_K):
        # fmt: off
        k_ok, k_off, valid = _key_block(
            start, total, lo_d, lo_h, lo_w, n_h, n_w, st_d, st_h, st_w, q_ok, base, s_d, s_h, s_w,
            KD, KH, KW, DD, DH, DW, BLOCK_K,
        )
        # fmt: on
        kmask = k_ok[:, None] & e_ok[None, :]
        k = _load_tile(Kt + k_off[:, None] + e[None, :] * s_e, kmask, UPCAST)
        v = _load_tile(V + k_off[:, None] + e[None, :] * s_e, kmask, UPCAST)
        s = _scores(q, k, scale, EXACT)
        if EXACT:
            p = tl.where(valid, tl.exp(s - lse.to(tl.float64)[:, None]) / lnorm[:, None], 0.0).to(tl.float32)
        else:
            p = tl.where(valid, tl.exp(s - lse[:, None]), 0.0)
        dp = _scores(do, v, 1.0, EXACT).to(tl.float32)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k).to(tl.float32)
    tl.store(DQ + q_off[:, None] + e[None, :] * s_e, (dq * scale).to(DQ.dtype.element_ty), mask=qmask)


@triton.jit
def _local_attn3d_bwd_dkdv(
    Q,
    Kt,
    V,
    DO,
    LSE,
    LNORM,
    DELTA,
    DK,
    DV,
    s_b,
    s_d,
    s_h,
    s_w,
    s_n,
    s_e,
    D,
    H,
    W,
    NH,
    E,
    scale,
    KD: tl.constexpr,
    KH: tl.constexpr,
    KW: tl.constexpr,
    DD: tl.constexpr,
    DH: tl.constexpr,
    DW: tl.constexpr,
    TD: tl.constexpr,
    TH: tl.constexpr,
    TW: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_E: tl.constexpr,
    UPCAST: tl.constexpr,
    EXACT: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // NH
    hd = pid_bh % NH
    d0, h0, w0 = _tile_coords(pid_t, D, H, W, TD, TH, TW)
    BLOCK_KT: tl.constexpr = TD * TH * TW
    ki = tl.arange(0, BLOCK_KT)
    kd = d0 + ki // (TH * TW)
    kh = h0 + (ki // TW) % TH
    kw = w0 + ki % TW
    k_ok = (kd < D) & (kh < H) & (kw < W)
    e = tl.arange(0, BLOCK_E)
    e_ok = e < E
    base = b * s_b + hd * s_n
    k_off = base + kd * s_d + kh * s_h + kw * s_w
    kmask = k_ok[:, None] & e_ok[None, :]
    k = _load_tile(Kt + k_off[:, None] + e[None, :] * s_e, kmask, UPCAST)
    v = _load_tile(V + k_off[:, None] + e[None, :] * s_e, kmask, UPCAST)
    # queries that can see a key of this tile lie within (k - 1) * d of it on every axis
    lo_d = tl.maximum(d0 - (KD - 1) * DD, 0)
    lo_h = tl.maximum(h0 - (KH - 1) * DH, 0)
    lo_w = tl.maximum(w0 - (KW - 1) * DW, 0)
    n_d = tl.minimum(d0 + TD + (KD - 1) * DD, D) - lo_d
    n_h = tl.minimum(h0 + TH + (KH - 1) * DH, H) - lo_h
    n_w = tl.minimum(w0 + TW + (KW - 1) * DW, W) - lo_w
    total = n_d * n_h * n_w
    dk = tl.zeros([BLOCK_KT, BLOCK_E], tl.float32)
    dv = tl.zeros([BLOCK_KT, BLOCK_E], tl.float32)
    for start in range(0, total, BLOCK_Q):
        q_ok, qd, qh, qw, q_off = _halo_index(start, total, lo_d, lo_h, lo_w, n_h, n_w, base, s_d, s_h, s_w, BLOCK_Q)
        qmask = q_ok[:, None] & e_ok[None, :]
        q = _load_tile(Q + q_off[:, None] + e[None, :] * s_e, qmask, UPCAST)
        do = _load_tile(DO + q_off[:, None] + e[None, :] * s_e, qmask, UPCAST)
        row = pid_bh * D * H * W + (qd * H + qh) * W + qw
        lse = tl.load(LSE + row, mask=q_ok, other=0.0)
        delta = tl.load(DELTA + row, mask=q_ok, other=0.0)
        st_d = _start(qd, D, KD, DD)
        st_h = _start(qh, H, KH, DH)
        st_w = _start(qw, W, KW, DW)
        valid = _window_mask(q_ok, k_ok, kd, kh, kw, st_d, st_h, st_w, KD, KH, KW, DD, DH, DW)  # [BLOCK_Q, BLOCK_KT]
        s = _scores(q, k, scale, EXACT)
        if EXACT:
            lnorm = tl.load(LNORM + row, mask=q_ok, other=1.0)
            p = tl.where(valid, tl.exp(s - lse.to(tl.float64)[:, None]) / lnorm[:, None], 0.0).to(tl.float32)
        else:
            p = tl.where(valid, tl.exp(s - lse[:, None]), 0.0)
        dv += tl.dot(tl.trans(p).to(do.dtype), do).to(tl.float32)
        dp = _scores(do, v, 1.0, EXACT).to(tl.float32)
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds).to(q.dtype), q).to(tl.float32)
    tl.store(DK + k_off[:, None] + e[None, :] * s_e, (dk * scale).to(DK.dtype.element_ty), mask=kmask)
    tl.store(DV + k_off[:, None] + e[None, :] * s_e, dv.to(DV.dtype.element_ty), mask=kmask)


# ---------------------------------------------------------------------------------------------- launchers
TILE = (2, 4, 8)  # queries per program: 64
BLOCK = 64  # keys (forward, dQ) or queries (dK/dV) per inner step
EXACT_ABOVE = 100.0  # |log-sum-exp| above which the backward scores in float64 (as torch_impl.EXACT_ABOVE)


def _grid(shape, tile):
    B, D, H, W, NH, _ = shape
    n = triton.cdiv(D, tile[0]) * triton.cdiv(H, tile[1]) * triton.cdiv(W, tile[2])
    return (n, B * NH)


def _common(q, kernel, dilation, scale):
    B, D, H, W, NH, E = q.shape
    return dict(
        D=D,
        H=H,
        W=W,
        NH=NH,
        E=E,
        scale=scale,
        KD=kernel[0],
        KH=kernel[1],
        KW=kernel[2],
        DD=dilation[0],
        DH=dilation[1],
        DW=dilation[2],
        TD=TILE[0],
        TH=TILE[1],
        TW=TILE[2],
        BLOCK_E=max(16, triton.next_power_of_2(E)),
        UPCAST=q.dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1",
    )


def local_attn3d_forward(q, k, v, kernel, dilation, scale):
    B, D, H, W, NH, E = q.shape
    o = torch.empty_like(q)
    lse = torch.empty(B * NH, D * H * W, device=q.device, dtype=torch.float32)
    _local_attn3d_fwd[_grid(q.shape, TILE)](
        q, k, v, o, lse, *q.stride(), **_common(q, kernel, dilation, scale), BLOCK_K=BLOCK
    )
    return o, lse


def local_attn3d_backward(do, q, k, v, o, lse, kernel, dilation, scale):
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    finite = lse[torch.isfinite(lse) & (lse.abs() < 1e29)]  # (a row without keys would hold -1e30)
    exact = finite.numel() > 0 and float(finite.abs().max()) > EXACT_ABOVE  # one sync, as the CPU path's
    acc = torch.float64 if exact else torch.float32  # a saturated row's dO.o then equals its dO.v exactly: ds = 0
    delta = (do.to(acc) * o.to(acc)).sum(-1).float().permute(0, 4, 1, 2, 3).reshape(lse.shape).contiguous()
    lnorm = torch.ones(lse.shape, device=lse.device, dtype=torch.float64) if exact else lse  # unused unless exact
    args = {**_common(q, kernel, dilation, scale), "EXACT": exact}
    g = _grid(q.shape, TILE)
    _local_attn3d_bwd_dq[g](q, k, v, do, lse, delta, dq, lnorm, *q.stride(), **args, BLOCK_K=BLOCK)
    _local_attn3d_bwd_dkdv[g](q, k, v, do, lse, lnorm, delta, dk, dv, *q.stride(), **args, BLOCK_Q=BLOCK)
    return dq, dk, dv
