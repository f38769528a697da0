"""Window attention upsampling: shapes, windowed == global when one window covers the map, zeroed
attention == interpolation, and upsample=wau on every U-Net family."""

from __future__ import annotations

import pytest
import torch

from seg.nn import create_net
from seg.nn.blocks.window_attention_upsample import WindowAttentionUpsample


@pytest.mark.parametrize(
    "d, low, high",
    [(3, (5, 6, 3), (10, 12, 6)), (2, (7, 9), (14, 18)), (3, (4, 5, 6), (8, 10, 6))],
    ids=["3d-odd", "2d-odd", "3d-unpooled-axis"],
)
@pytest.mark.parametrize("window", [4, None], ids=["windowed", "global"])
def test_shapes_and_gradients(d, low, high, window):
    torch.manual_seed(0)
    wau = WindowAttentionUpsample(d, 12, 6, 8, heads=2, window=window)
    y, x = torch.randn(2, 12, *low, requires_grad=True), torch.randn(2, 6, *high, requires_grad=True)
    out = wau(y, x)
    assert out.shape == (2, 8, *high)
    out.square().mean().backward()
    assert y.grad.abs().sum() > 0 and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in wau.parameters())


def test_windowed_equals_global_when_window_covers_map():
    torch.manual_seed(1)
    g = WindowAttentionUpsample(3, 8, 4, 8, heads=2, window=None)
    w = WindowAttentionUpsample(3, 8, 4, 8, heads=2, window=16)
    w.load_state_dict(g.state_dict())
    y, x = torch.randn(1, 8, 3, 4, 2), torch.randn(1, 4, 6, 8, 4)
    torch.testing.assert_close(w(y, x), g(y, x), atol=1e-5, rtol=1e-5)


def test_windowed_differs_from_global_with_small_windows():
    torch.manual_seed(1)
    g = WindowAttentionUpsample(3, 8, 4, 8, heads=2, window=None)
    w = WindowAttentionUpsample(3, 8, 4, 8, heads=2, window=2)
    w.load_state_dict(g.state_dict())
    y, x = torch.randn(1, 8, 4, 4, 4), torch.randn(1, 4, 8, 8, 8)
    assert not torch.allclose(w(y, x), g(y, x), atol=1e-4)


def test_zeroed_attention_is_plain_interpolation():
    torch.manual_seed(2)
    wau = WindowAttentionUpsample(3, 8, 4, 8, heads=2, window=4)
    with torch.no_grad():
        wau.attn.out_proj.weight.zero_()
        wau.attn.out_proj.bias.zero_()
        wau.mlp[-1].weight.zero_()
        wau.mlp[-1].bias.zero_()
    y, x = torch.randn(1, 8, 3, 5, 4), torch.randn(1, 4, 6, 10, 8)
    expected = wau.interpolate(wau.low_proj(y), x.shape[2:])
    torch.testing.assert_close(wau(y, x), expected)


@pytest.mark.parametrize("name", ["unet", "agunet", "daunet"])
@pytest.mark.parametrize("spatial_dims, shape", [(3, (19, 22, 13)), (2, (37, 50))], ids=["3d", "2d"])
def test_every_unet_family_takes_wau(name, spatial_dims, shape):
    net = create_net(
        name, spatial_dims=spatial_dims, in_channels=1, out_channels=2, filters=[8, 8, 16], upsample="wau", wau_window=4
    )
    assert sum(isinstance(m, WindowAttentionUpsample) for m in net.modules()) == 2
    out = net(torch.randn(1, 1, *shape))
    out = out[0] if isinstance(out, list) else out
    assert out.shape == (1, 2, *shape)
    out.mean().backward()
