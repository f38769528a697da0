from __future__ import annotations

import pytest
import torch

from seg.nn import create_net
from seg.nn.blocks.local_attention import LocalAttention3d


@pytest.mark.parametrize("spatial_dims, shape", [(3, (7, 13, 9)), (2, (11, 14))], ids=["3d-odd", "2d"])
def test_block_shapes_gradients_and_zero_projection_identity(spatial_dims, shape):
    torch.manual_seed(0)
    blk = LocalAttention3d(16, heads=2, kernel_size=5, spatial_dims=spatial_dims)
    x = torch.randn(2, 16, *shape, requires_grad=True)
    y = blk(x)
    assert y.shape == x.shape
    y.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in blk.parameters())
    with torch.no_grad():
        blk.proj.weight.zero_()
        blk.proj.bias.zero_()
        torch.testing.assert_close(blk(x), x)  # the residual path alone


def test_kernel_shrinks_on_short_axes():
    blk = LocalAttention3d(8, heads=2, kernel_size=7)
    assert blk(torch.randn(1, 8, 3, 4, 9)).shape == (1, 8, 3, 4, 9)  # 7 -> 3 on D, 3 on H


def test_net_has_blocks_at_levels_and_runs():
    net = create_net(
        "unet_local_attn", spatial_dims=3, in_channels=1, out_channels=2, filters=[8, 16, 16], local_attention_kernel=3
    )
    assert set(net.local_attn) == {"1", "2"}
    x = torch.randn(1, 1, 19, 22, 13)
    out = net(x)
    assert out.shape == (1, 2, 19, 22, 13)
    out.mean().backward()
    gated = create_net(
        "unet_local_attn",
        spatial_dims=3,
        in_channels=1,
        out_channels=2,
        filters=[8, 16, 16],
        attention_gate="concat",
        local_attention_levels=[2],
    )
    assert set(gated.local_attn) == {"2"} and gated(x).shape == (1, 2, 19, 22, 13)


def test_short_training_learns_on_synthetic_blobs():
    """A few steps on bright blobs: the local-attention net's loss falls well below its start."""
    torch.manual_seed(0)
    net = create_net(
        "unet_local_attn", spatial_dims=3, in_channels=1, out_channels=2, filters=[8, 16], local_attention_kernel=3
    )
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    y = torch.zeros(2, 16, 16, 16, dtype=torch.long)
    y[0, 3:8, 4:9, 5:10] = 1
    y[1, 9:14, 8:13, 2:7] = 1
    x = y[:, None].float() + 0.4 * torch.randn(2, 1, 16, 16, 16)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
