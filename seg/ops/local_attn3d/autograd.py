"""``torch.autograd.Function`` over the Triton kernels (forward saves the log-sum-exp for the backward)."""

from __future__ import annotations

import torch


class TritonNeighbourhoodAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, kernel, dilation, scale):
        from seg.ops.local_attn3d.triton_kernels import local_attn3d_forward

        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        o, lse = local_attn3d_forward(q, k, v, kernel, dilation, scale)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.args = (kernel, dilation, scale)
        return o

    @staticmethod
    def backward(ctx, do):
        from seg.ops.local_attn3d.triton_kernels import local_attn3d_backward

        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = local_attn3d_backward(do.contiguous(), q, k, v, o, lse, *ctx.args)
        return dq, dk, dv, None, None, None
