"""CUDA checks (marker ``gpu``: skipped without CUDA, run by ``scripts/gpu_check.sh``).

Compiled Triton kernels against the reference (forward and all gradients, fp32 and bf16), one training
step of the U-Net under bf16 autocast, and a sliding-window prediction on CUDA equal to the CPU's.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 2e-3), (torch.bfloat16, 5e-2)], ids=["fp32", "bf16"])
@pytest.mark.parametrize(
    "shape, kernel, dilation", [((1, 9, 10, 11, 2, 32), 5, 1), ((2, 12, 7, 9, 4, 64), 3, 2)], ids=["k5", "k3-dil2"]
)
def test_triton_kernels_compiled_match_reference(shape, kernel, dilation, dtype, tol):
    from seg.ops import local_attn3d

    torch.manual_seed(0)
    qkv = [torch.randn(*shape, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3)]
    ref_in = [t.detach().float().requires_grad_() for t in qkv]
    out = local_attn3d(*qkv, kernel, dilation, backend="triton")
    ref = local_attn3d(*ref_in, kernel, dilation, backend="reference")
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)
    g = torch.randn_like(ref)
    grads = torch.autograd.grad(out, qkv, g.to(dtype))
    ref_grads = torch.autograd.grad(ref, ref_in, g)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a.float(), b, atol=4 * tol, rtol=4 * tol)


def test_training_step_bf16_on_cuda():
    from seg.lit.losses import SegLoss
    from seg.nn import create_net

    torch.manual_seed(0)
    net = create_net("unet", spatial_dims=3, in_channels=1, out_channels=2, filters=[8, 16, 32]).cuda()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = SegLoss({"name": "dice_ce"})
    x = torch.randn(2, 1, 32, 32, 32, device="cuda")
    y = (x > 0.5).long()
    losses = []
    for _ in range(5):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_fn(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]  # five steps on a fixed batch lower its loss


def test_prediction_on_cuda_equals_cpu():
    from seg.nn import create_net
    from seg.nn.inferer import InfererSpec, sliding_window

    torch.manual_seed(0)
    net = create_net("unet", spatial_dims=3, in_channels=1, out_channels=2, filters=[8, 16, 32]).eval()
    x = torch.randn(1, 1, 40, 37, 29)
    spec = InfererSpec(roi_size=(24, 24, 24), overlap=0.5)
    with torch.inference_mode():
        cpu = torch.softmax(sliding_window(net, x, spec), 1)
        gpu = torch.softmax(sliding_window(net.cuda(), x.cuda(), spec), 1).cpu()
    torch.testing.assert_close(gpu, cpu, atol=1e-3, rtol=1e-3)
    assert torch.equal(gpu.argmax(1)[cpu.max(1).values > 0.51], cpu.argmax(1)[cpu.max(1).values > 0.51])
