from __future__ import annotations

import pytest
import torch

from seg.nn.blocks import pool_plan
from seg.nn.nets.unet import UNet


def test_pool_plan_does_not_pool_small_axes():
    # hippocampus-like 35x50x36 with 4 pools: 35->18->9->5->3, and 4-voxel axes never pooled
    assert pool_plan((35, 50, 36), 4) == [(2, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2)]
    assert pool_plan((8, 64, 4), 3) == [(2, 2, 1), (1, 2, 1), (1, 2, 1)]


@pytest.mark.parametrize(
    "kwargs, shape",
    [
        ({"spatial_dims": 3}, (37, 50, 29)),
        ({"spatial_dims": 3, "filters": [4, 8, 8]}, (5, 64, 3)),
        ({"spatial_dims": 2, "norm": "instance"}, (37, 50)),
        ({"spatial_dims": 3, "upsample": "trilinear", "filters": [4, 8, 16]}, (17, 9, 12)),
    ],
    ids=["paper-filters-odd", "thin-axes", "2d-instance", "trilinear"],
)
def test_unet_shapes(kwargs, shape):
    net = UNet(in_channels=1, out_channels=3, **kwargs)
    assert net(torch.randn(1, 1, *shape)).shape == (1, 3, *shape)


def test_deep_supervision_list_in_training_tensor_in_eval():
    net = UNet(3, 1, 2, filters=[4, 8, 16, 32], deep_supervision=True)
    outs = net(torch.randn(2, 1, 37, 20, 19))
    assert isinstance(outs, list) and len(outs) == 3
    assert [tuple(o.shape[2:]) for o in outs] == [(37, 20, 19), (19, 10, 10), (10, 5, 5)]
    net.eval()
    assert net(torch.randn(1, 1, 37, 20, 19)).shape == (1, 2, 37, 20, 19)


def test_bad_option_is_explained():
    with pytest.raises(ValueError, match="did you mean 'batch'"):
        UNet(3, 1, 2, norm="bacth")
