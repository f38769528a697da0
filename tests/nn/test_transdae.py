from __future__ import annotations

import pytest
import torch

from seg.nn import create_net
from seg.nn.nets.transdae import EfficientAttention, PatchExpand, TransposedChannelAttention

SMALL = {"dims": (16, 32, 32), "heads": (1, 2, 2), "depths": (1, 1, 1)}


@pytest.mark.parametrize(
    "spatial_dims, shape",
    [(2, (37, 50)), (3, (19, 22, 13)), (3, (16, 16, 16))],
    ids=["2d-odd", "3d-odd", "3d-multiple"],
)
def test_any_size_shapes_and_gradients(spatial_dims, shape):
    torch.manual_seed(0)
    net = create_net("transdae", spatial_dims=spatial_dims, in_channels=2, out_channels=3, **SMALL)
    y = net(torch.randn(2, 2, *shape))
    assert y.shape == (2, 3, *shape)
    y.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_presets():
    light = create_net("transdae", spatial_dims=3, in_channels=1, out_channels=2)
    assert [e.conv.out_channels for e in light.embeds] == [32, 64, 128]
    paper = create_net("transdae", spatial_dims=2, in_channels=1, out_channels=2)
    assert [e.conv.out_channels for e in paper.embeds] == [128, 320, 512]
    assert [len(s) for s in paper.stages] == [2, 2, 2]
    with pytest.raises(ValueError, match="preset"):
        create_net("transdae", preset="huge")


def test_efficient_attention_is_linear_in_tokens_and_channel_attention_shapes():
    ea = EfficientAttention(2, 16, 2, reduction=2)
    x = torch.randn(1, 64, 16)
    assert ea(x, (8, 8)).shape == (1, 64, 16)
    # no N x N map: the context is d x d per head, whatever N
    ca = TransposedChannelAttention(16, 4)
    assert ca(torch.randn(2, 1000, 16)).shape == (2, 1000, 16)


def test_patch_expand_pixel_shuffle_order():
    pe = PatchExpand(2, 1, 1, 2)
    with torch.no_grad():
        pe.expand.weight.copy_(torch.tensor([[1.0], [2.0], [3.0], [4.0]]))
        pe.expand.bias.zero_()
    pe.norm = torch.nn.Identity()
    t, size = pe(torch.ones(1, 1, 1), (1, 1))
    assert size == (2, 2)
    assert t.reshape(2, 2).tolist() == [[1.0, 2.0], [3.0, 4.0]]  # (f1, f2) laid out row-major
