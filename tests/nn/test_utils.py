from __future__ import annotations

import pytest
import torch

from seg.nn import create_net
from seg.nn.utils import fuse_conv_bn, prepare_for_inference


@pytest.mark.parametrize("name", ["unet", "agunet", "daunet"])
def test_fused_net_computes_the_same_function(name):
    torch.manual_seed(0)
    net = create_net(name, spatial_dims=3, in_channels=1, out_channels=2, filters=[4, 8, 8])
    # give BN non-trivial statistics
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(2, 1, 12, 14, 10) * 3 + 1)
    net.eval()
    x = torch.randn(1, 1, 12, 14, 10)
    with torch.no_grad():
        ref = net(x)
        fused = fuse_conv_bn(net)
        n_bn = sum(isinstance(m, torch.nn.BatchNorm3d) for m in fused.modules())
        assert n_bn < sum(isinstance(m, torch.nn.BatchNorm3d) for m in net.modules())
        torch.testing.assert_close(fused(x), ref, rtol=1e-4, atol=1e-4)
        fast = prepare_for_inference(net)
        torch.testing.assert_close(fast(x.contiguous(memory_format=torch.channels_last_3d)), ref, rtol=1e-4, atol=1e-4)


def test_single_channel_conv_is_widened_and_exact():
    """prepare_for_inference runs 1-input-channel 3D convs as 2-channel ones (oneDNN path); same outputs."""
    from seg.nn.utils import TwoChannelConv3d

    torch.manual_seed(1)
    net = create_net("agunet", spatial_dims=3, in_channels=1, out_channels=2, filters=[4, 8, 8]).eval()
    fast = prepare_for_inference(net)
    widened = [m for m in fast.modules() if isinstance(m, TwoChannelConv3d)]
    # the first encoder conv and the multi-scale input convs all read the 1-channel image
    assert len(widened) == 1 + len(net.ms_convs)
    assert not any(
        isinstance(m, torch.nn.Conv3d) and m.in_channels == 1 and m.kernel_size[0] > 1 for m in fast.modules()
    )
    x = torch.randn(1, 1, 9, 12, 10)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), net(x), rtol=1e-4, atol=1e-4)
