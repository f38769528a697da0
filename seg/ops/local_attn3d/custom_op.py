"""``seg::local_attn3d``: the torch path as ``torch.library`` custom ops, its one autograd wiring in eager
mode and under ``torch.compile`` (which sees one opaque node with fake implementations for shapes
instead of tracing through the Python loop over lines of blocks). The forward op also returns the
log-sum-exp, which autograd saves with q, k, v and the output, so the backward recomputes nothing."""

from __future__ import annotations

import torch

from seg.ops.local_attn3d.torch_impl import local_attn3d_torch_backward, local_attn3d_torch_forward


@torch.library.custom_op("seg::local_attn3d", mutates_args=())
def local_attn3d_fwd_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: list[int], dilation: list[int], scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    out, lse = local_attn3d_torch_forward(q, k, v, tuple(kernel_size), tuple(dilation), scale)
    return out, lse


@local_attn3d_fwd_op.register_fake
def _(q, k, v, kernel_size, dilation, scale):
    return torch.empty_like(q), q.new_empty(q.shape[:-1], dtype=torch.promote_types(q.dtype, torch.float32))


@torch.library.custom_op("seg::local_attn3d_backward", mutates_args=())
def local_attn3d_backward_op(
    grad: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    kernel_size: list[int],
    dilation: list[int],
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dq, dk, dv = local_attn3d_torch_backward(grad, q, k, v, out, lse, tuple(kernel_size), tuple(dilation), scale)
    return dq, dk, dv


@local_attn3d_backward_op.register_fake
def _(grad, q, k, v, out, lse, kernel_size, dilation, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, kernel_size, dilation, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.args = (list(kernel_size), list(dilation), float(scale))


def _backward(ctx, grad, _grad_lse):
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = local_attn3d_backward_op(grad.contiguous(), q, k, v, out, lse, *ctx.args)
    return dq, dk, dv, None, None, None


local_attn3d_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def local_attn3d_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: list[int], dilation: list[int], scale: float
) -> torch.Tensor:
    """The output of ``seg::local_attn3d`` (its log-sum-exp is for autograd)."""
    return local_attn3d_fwd_op(q, k, v, kernel_size, dilation, scale)[0]
