"""3D neighbourhood attention: each backend against the reference, the reference against flex_attention
with a NATTEN-style mask, gradcheck, argument checks."""

from __future__ import annotations

import os

import pytest
import torch

from seg.ops import local_attn3d
from seg.ops.local_attn3d.reference import neighbourhood_index

CASES = [
    # (shape [B, D, H, W, heads, E], kernel, dilation)
    ((1, 7, 13, 9, 2, 8), 3, 1),
    ((2, 7, 13, 9, 2, 16), (5, 3, 7), 1),
    ((1, 9, 8, 10, 3, 4), 3, (2, 1, 3)),
    ((1, 11, 6, 7, 1, 32), (5, 5, 3), (2, 1, 2)),
]
IDS = ["7x13x9-k3", "k5x3x7-2batch", "dilated-2x1x3", "dilated-k5-hd32"]


def test_neighbourhood_index_matches_natten_rule():
    # NATTEN: start = clamp(i - k//2, 0, L - k) without dilation
    idx = neighbourhood_index(6, 3, 1)
    assert idx.tolist() == [[0, 1, 2], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5], [3, 4, 5]]
    # dilation 2 on length 7: classes {0,2,4,6} and {1,3,5}, windows shifted inward per class
    idx = neighbourhood_index(7, 3, 2)
    assert idx[0].tolist() == [0, 2, 4] and idx[1].tolist() == [1, 3, 5] and idx[5].tolist() == [1, 3, 5]
    assert idx[6].tolist() == [2, 4, 6] and idx[3].tolist() == [1, 3, 5]


@pytest.mark.parametrize("shape, kernel, dilation", CASES, ids=IDS)
def test_torch_backend_matches_reference_forward_and_gradients(shape, kernel, dilation):
    torch.manual_seed(0)
    q, k, v = [torch.randn(*shape, requires_grad=True) for _ in range(3)]
    ref = local_attn3d(q, k, v, kernel, dilation, backend="reference")
    out = local_attn3d(q, k, v, kernel, dilation, backend="torch")
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(ref, (q, k, v), g), torch.autograd.grad(out, (q, k, v), g)):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("width", [7, 8, 9, 10, 11, 12])
def test_torch_backend_line_borders(width):
    """W is the axis whose blocks share one key line; positions outside the volume stand in for the keys of
    inward-shifted border windows. Every width from the kernel to kernel + 5 (all remainders of the W block)."""
    torch.manual_seed(width)
    q, k, v = [torch.randn(1, 5, 6, width, 2, 4, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    kernel = (3, 5, 7)
    ref = local_attn3d(q, k, v, kernel, backend="reference")
    out = local_attn3d(q, k, v, kernel, backend="torch")
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(ref, (q, k, v), g), torch.autograd.grad(out, (q, k, v), g)):
        torch.testing.assert_close(b, a, atol=1e-12, rtol=1e-12)


def test_torch_backend_float64_exact_and_fp16_runs():
    torch.manual_seed(1)
    q, k, v = [torch.randn(1, 6, 7, 5, 2, 4, dtype=torch.float64) for _ in range(3)]
    torch.testing.assert_close(
        local_attn3d(q, k, v, 3, backend="torch"), local_attn3d(q, k, v, 3, backend="reference"), atol=1e-12, rtol=1e-12
    )
    h = [t.to(torch.bfloat16) for t in (q, k, v)]
    out = local_attn3d(*h, 3, backend="torch")
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), local_attn3d(q, k, v, 3, backend="reference"), atol=3e-2, rtol=3e-2)


def test_unwritten_output_would_fail(monkeypatch):
    """Fresh outputs are poisoned with NaN: a block the forward forgot to write shows up."""
    from seg.ops.local_attn3d import torch_impl as ti

    real_empty_like = torch.empty_like
    monkeypatch.setattr(ti.torch, "empty_like", lambda x, **kw: real_empty_like(x, **kw).fill_(float("nan")))
    torch.manual_seed(2)
    q, k, v = [torch.randn(1, 9, 10, 11, 2, 8) for _ in range(3)]  # not multiples of the block
    out = local_attn3d(q, k, v, 5, backend="torch")
    assert torch.isfinite(out).all()


def test_reference_against_flex_attention():
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    torch.manual_seed(3)
    B, D, H, W, h, e = 1, 6, 7, 5, 2, 8
    ks, dil = (3, 5, 3), (2, 1, 1)
    q, k, v = [torch.randn(B, D, H, W, h, e) for _ in range(3)]
    idx = [neighbourhood_index(n, kk, dd) for n, kk, dd in zip((D, H, W), ks, dil)]
    starts = [i[:, 0] for i in idx]

    def coords(t):
        return t // (H * W), (t // W) % H, t % W

    def mask_mod(b, hh, qi, ki):
        qd, qh, qw = coords(qi)
        kd, kh, kw = coords(ki)
        ok = torch.ones_like(qi, dtype=torch.bool)
        for qc, kc, st, kk, dd in zip((qd, qh, qw), (kd, kh, kw), starts, ks, dil):
            s = st[qc]
            ok = ok & (kc >= s) & (kc <= s + (kk - 1) * dd) & ((kc - s) % dd == 0)
        return ok

    N = D * H * W
    block = flex.create_block_mask(mask_mod, B, h, N, N, device="cpu", BLOCK_SIZE=N)
    to_flex = lambda t: t.reshape(B, N, h, e).transpose(1, 2)  # noqa: E731
    out = flex.flex_attention(to_flex(q), to_flex(k), to_flex(v), block_mask=block)
    out = out.transpose(1, 2).reshape(B, D, H, W, h, e)
    torch.testing.assert_close(local_attn3d(q, k, v, ks, dil, backend="reference"), out, atol=1e-5, rtol=1e-5)


def test_reference_gradcheck_float64():
    torch.manual_seed(4)
    q, k, v = [torch.randn(1, 4, 5, 3, 1, 3, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    assert torch.autograd.gradcheck(lambda a, b, c: local_attn3d(a, b, c, 3, backend="reference"), (q, k, v))
    assert torch.autograd.gradcheck(lambda a, b, c: local_attn3d(a, b, c, 3, backend="torch"), (q, k, v))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kernel_size": 4}, "odd"),
        ({"kernel_size": 9}, "larger than axis"),
        ({"kernel_size": 3, "dilation": 3}, "larger than axis"),
        ({"kernel_size": 3, "scale": float("nan")}, "finite"),
        ({"kernel_size": 3, "backend": "cuda"}, "not one of"),
    ],
)
def test_argument_errors(kwargs, match):
    q = torch.randn(1, 8, 8, 7, 1, 4)
    with pytest.raises(ValueError, match=match):
        local_attn3d(q, q, q, **kwargs)


def test_shape_dtype_rank_errors_and_triton_request():
    q = torch.randn(1, 8, 8, 8, 1, 4)
    with pytest.raises(ValueError, match="rank"):
        local_attn3d(q[0], q[0], q[0], 3)
    with pytest.raises(ValueError, match="shapes differ"):
        local_attn3d(q, q[:, :7], q, 3)
    with pytest.raises(ValueError, match="dtypes differ"):
        local_attn3d(q, q.double(), q, 3)
    if os.environ.get("TRITON_INTERPRET") != "1":
        with pytest.raises(RuntimeError, match="triton"):
            local_attn3d(q, q, q, 3, backend="triton")


def test_torch_compile_uses_the_custom_op():
    torch.manual_seed(5)
    q, k, v = [torch.randn(1, 6, 7, 5, 2, 8, requires_grad=True) for _ in range(3)]

    def f(a, b, c):
        return local_attn3d(a, b, c, 3, backend="torch") * 2

    eager = f(q, k, v)
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)(q, k, v)
    torch.testing.assert_close(compiled, eager)
    g = torch.randn_like(eager)
    for a, b in zip(torch.autograd.grad(eager, (q, k, v), g), torch.autograd.grad(compiled, (q, k, v), g)):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    torch.library.opcheck(
        torch.ops.seg.local_attn3d.default, (q.detach(), k.detach(), v.detach(), [3, 3, 3], [1, 1, 1], 0.3)
    )


def test_custom_op_backward_reuses_the_saved_log_sum_exp(monkeypatch):
    """The op's backward runs the backward kernels on the saved output and log-sum-exp: no second forward."""
    from seg.ops.local_attn3d import torch_impl as ti
    from seg.ops.local_attn3d.custom_op import local_attn3d_op

    calls = []
    real = ti._forward
    monkeypatch.setattr(ti, "_forward", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(6)
    q, k, v = [torch.randn(1, 6, 7, 9, 2, 8, requires_grad=True) for _ in range(3)]
    out = local_attn3d_op(q, k, v, [3, 5, 3], [1, 1, 1], 0.4)
    grads = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    assert len(calls) == 1
    ref = local_attn3d(q, k, v, (3, 5, 3), scale=0.4, backend="reference")
    for a, b in zip(torch.autograd.grad(ref, (q, k, v), torch.ones_like(ref)), grads):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("gain", [60.0, 100.0])
def test_torch_backend_masks_exactly_with_large_logits(gain):
    """Scores around 1e4 and beyond: an additive finite mask would let out-of-window keys in."""
    torch.manual_seed(0)
    shape = (1, 7, 8, 9, 2, 16)
    q, k, v = [torch.randn(*shape, dtype=torch.float64) for _ in range(3)]
    q, k = q * gain, k * gain
    ref = local_attn3d(q, k, v, 3, backend="reference")
    out = local_attn3d(q.float(), k.float(), v.float(), 3, backend="torch").double()
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, atol=2e-4, rtol=1e-4)


def test_inference_skips_the_custom_op_and_training_uses_it(monkeypatch):
    import sys

    fn = sys.modules["seg.ops.local_attn3d.functional"]  # the package name is shadowed by the function

    q, k, v = [torch.randn(1, 6, 5, 7, 2, 8, dtype=torch.float64) for _ in range(3)]
    ref = local_attn3d(q, k, v, 3, backend="reference")
    calls = []
    real = fn.local_attn3d_op
    monkeypatch.setattr(fn, "local_attn3d_op", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        torch.testing.assert_close(local_attn3d(q, k, v, 3, backend="torch"), ref)
    torch.testing.assert_close(local_attn3d(q, k, v, 3, backend="torch"), ref)  # grad on, nothing requires it
    assert calls == []
    qg = q.clone().requires_grad_(True)
    local_attn3d(qg, k, v, 3, backend="torch").sum().backward()
    assert calls == [1] and qg.grad is not None and torch.isfinite(qg.grad).all()


def test_inference_first_call_imports_no_tracing_machinery():
    # the custom op's first call imports sympy and more (~180 MB of RSS once per process, 3.5x the op's
    # own first-call memory at 24^3): an inference-only process must not pay it. Nor MONAI (#46 item 8: the
    # backend check's option look-up imported it on the first call, 0.19x dense SDPA's memory instead of 0.04x)
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from seg.ops import local_attn3d\n"
        "q = torch.randn(1, 8, 8, 8, 2, 8)\n"
        "with torch.no_grad():\n"
        "    local_attn3d(q, q, q, 3, backend='torch')\n"
        "print('sympy' in sys.modules, 'monai' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False False"
