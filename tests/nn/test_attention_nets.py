"""AGUNet / DAUNet / DAGUNet: shapes, switches, attention-block invariants, pinned sizes."""

from __future__ import annotations

import pytest
import torch

from seg.nn import create_net
from seg.nn.blocks import AttentionGate, ChannelAttention, DualAttention, PositionAttention

SMALL = [4, 8, 16, 16]


@pytest.mark.parametrize(
    "name, kwargs, spatial_dims, shape",
    [
        ("agunet", {}, 3, (37, 50, 29)),
        ("agunet", {"attention_gate": "add"}, 3, (37, 50, 29)),
        ("daunet", {}, 3, (37, 50, 29)),
        ("daunet", {"guided": True}, 3, (37, 50, 29)),
        ("agunet", {}, 2, (37, 50)),
        ("daunet", {"guided": True}, 2, (37, 50)),
    ],
    ids=["agunet-3d", "agunet-add-3d", "daunet-3d", "dagunet-3d", "agunet-2d", "dagunet-2d"],
)
def test_shapes_ds_and_gradients(name, kwargs, spatial_dims, shape):
    net = create_net(name, spatial_dims=spatial_dims, in_channels=2, out_channels=3, filters=SMALL, **kwargs)
    outs = net(torch.randn(2, 2, *shape))
    assert isinstance(outs, list) and len(outs) == len(SMALL) - 1  # deep supervision on by default
    assert outs[0].shape == (2, 3, *shape)
    sum(o.square().mean() for o in outs).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing
    net.eval()
    with torch.no_grad():
        assert net(torch.randn(1, 2, *shape)).shape == (1, 3, *shape)


@pytest.mark.parametrize("name", ["unet", "agunet", "daunet"])
def test_paper_size(name):
    # five levels like the paper's filters (same pooling plan: 128x128x144 -> 8x8x9), thin to stay fast
    net = create_net(name, spatial_dims=3, in_channels=1, out_channels=2, filters=[4, 4, 8, 8, 8]).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 128, 128, 144)).shape == (1, 2, 128, 128, 144)


def _count(net, cls):
    return sum(isinstance(m, cls) for m in net.modules())


def test_switches_change_what_they_should():
    base = dict(spatial_dims=3, in_channels=1, out_channels=2, filters=SMALL)
    ag = create_net("agunet", **base)
    assert _count(ag, AttentionGate) == len(SMALL) - 1
    assert _count(create_net("agunet", attention_gate="none", **base), AttentionGate) == 0
    assert len(ag.ms_convs) == len(SMALL) - 1
    assert len(create_net("agunet", multiscale_input=False, **base).ms_convs) == 0
    no_ds = create_net("agunet", deep_supervision=False, **base)
    assert isinstance(no_ds(torch.randn(1, 1, 16, 16, 16)), torch.Tensor) and len(no_ds.heads) == 1
    da = create_net("daunet", **base)
    assert _count(da, DualAttention) == 1 and _count(da, AttentionGate) == 0
    assert _count(create_net("daunet", bottleneck_attention="none", **base), DualAttention) == 0
    pos_only = create_net("daunet", bottleneck_attention="position", **base)
    assert _count(pos_only, PositionAttention) == 1 and _count(pos_only, ChannelAttention) == 0
    assert len(create_net("daunet", guided=True, **base).guides) == len(SMALL) - 2
    assert len(da.guides) == 0


def test_gate_modes_differ_in_psi_input():
    g = AttentionGate(3, 8, 6, 4, "concat")
    a = AttentionGate(3, 8, 6, 4, "add")
    assert g.psi[0].in_channels == 8 and a.psi[0].in_channels == 4


@pytest.mark.parametrize("mode", ["concat", "add"])
def test_gate_coefficients_in_unit_interval_and_broadcast(mode):
    torch.manual_seed(0)
    gate = AttentionGate(3, 8, 6, 4, mode)
    g, x = torch.randn(2, 8, 5, 6, 7) * 5, torch.randn(2, 6, 5, 6, 7)
    out = gate(g, x)
    psi = gate.last_psi
    assert psi.shape == (2, 1, 5, 6, 7)
    assert psi.min() >= 0 and psi.max() <= 1 and psi.std() > 0
    torch.testing.assert_close(out, x * psi)  # one coefficient per voxel, same for every channel


def test_pam_cam_identity_at_init_and_gamma_learns():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 3, 4, 5, requires_grad=True)
    for block in (PositionAttention(3, 16), ChannelAttention()):
        y = block(x)
        torch.testing.assert_close(y, x)
        (y * torch.randn_like(y)).sum().backward()
        assert block.gamma.grad is not None and block.gamma.grad.abs() > 0
        block.gamma.data.fill_(0.5)
        assert not torch.allclose(block(x), x)


def test_pam_matches_explicit_formula():
    torch.manual_seed(1)
    pam = PositionAttention(2, 8)
    pam.gamma.data.fill_(1.0)
    x = torch.randn(1, 8, 3, 4)
    q, k, v = pam.q(x).flatten(2)[0], pam.k(x).flatten(2)[0], pam.v(x).flatten(2)[0]  # [C', N], [C', N], [C, N]
    att = torch.softmax(q.T @ k, dim=1)  # rows: queries
    expected = (v @ att.T).view(1, 8, 3, 4) + x
    torch.testing.assert_close(pam(x), expected)


# Parameter counts of the default configs (in_channels=1, out_channels=2, paper filters): a regression pin.
PINNED = {
    ("unet", 3, ()): 16_319_426,
    ("agunet", 3, ()): 20_431_684,
    ("daunet", 3, ()): 27_575_434,
    ("daunet", 3, (("guided", True),)): 28_547_394,
    ("agunet", 2, ()): 6_871_780,
}


@pytest.mark.parametrize("key", list(PINNED), ids=lambda k: f"{k[0]}-{k[1]}d{'-guided' if k[2] else ''}")
def test_parameter_counts_pinned(key):
    name, sd, kw = key
    net = create_net(name, spatial_dims=sd, in_channels=1, out_channels=2, **dict(kw))
    assert sum(p.numel() for p in net.parameters()) == PINNED[key]


def test_gate_parameter_count_formula():
    # W_g, W_x: 1x1x1 convs without bias + BN (2 params per channel); psi: conv with bias + BN(1)
    c, f = 32, 16
    gate = AttentionGate(3, c, c, f, "concat")
    expected = 2 * (c * f + 2 * f) + (2 * f + 1) + 2
    assert sum(p.numel() for p in gate.parameters()) == expected


@pytest.mark.parametrize("mode", ["concat", "add"])
def test_gate_matches_explicit_formula(mode):
    """The gate's memory-lean forward (split psi conv, in-place ReLU/add) equals the textbook formula."""
    from seg.nn.blocks import AttentionGate

    torch.manual_seed(5)
    gate = AttentionGate(3, 6, 4, 3, mode).train()
    g, x = torch.randn(2, 6, 5, 6, 7), torch.randn(2, 4, 5, 6, 7)
    g1, x1 = gate.w_g(g), gate.w_x(x)
    h = torch.cat([g1, x1], 1) if mode == "concat" else g1 + x1
    expected = x * torch.sigmoid(gate.psi(torch.relu(h)))
    torch.testing.assert_close(gate(g, x), expected)
