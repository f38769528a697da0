from __future__ import annotations

from functools import partial

import pytest
import torch

from seg.lit.losses import SegLoss, deep_supervision_weights
from seg.lit.module import SegModule


def _module(**kw):
    net = {"name": "unet", "spatial_dims": 3, "in_channels": 1, "out_channels": 3, "filters": [4, 8, 16], **kw}
    return SegModule(
        net=net,
        label_names=["a", "b"],
        optimizer=partial(torch.optim.Adam, lr=1e-2),
        inferer={"roi_size": [16, 16, 16], "sw_batch_size": 2},
    )


def _batch(b=2, shape=(20, 18, 17)):
    y = torch.zeros(b, 1, *shape)
    y[:, :, 4:10, 4:10, 4:10] = 1
    y[:, :, 12:16, 10:16, 8:14] = 2
    x = y + 0.3 * torch.randn_like(y)
    return {"image": x, "label": y}


def test_training_steps_reduce_loss():
    torch.manual_seed(0)
    m = _module()
    opt = m.configure_optimizers()
    batch = _batch()
    losses = []
    for _ in range(25):
        loss = m.training_step(batch, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.6 * losses[0]


def test_deep_supervision_loss_uses_every_head():
    m = _module(deep_supervision=True)
    out = m(_batch()["image"])
    assert isinstance(out, list) and len(out) == 2
    loss = m.loss_fn(out, _batch()["label"])
    loss.backward()
    for h in m.net.heads:
        assert h.weight.grad is not None and h.weight.grad.abs().sum() > 0


def test_ds_weights():
    assert deep_supervision_weights("equal", 4) == [0.25] * 4
    w = deep_supervision_weights("exp", 3)
    assert abs(sum(w) - 1) < 1e-9 and w[0] == 2 * w[1] == 4 * w[2]
    assert deep_supervision_weights([3, 1], 2) == [0.75, 0.25]


def test_loss_variants_equal_their_formulas():
    # each loss against its definition written out here (softmax probabilities p, one-hot labels g)
    torch.manual_seed(0)
    logits, y = torch.randn(2, 3, 8, 8, 8, requires_grad=True), torch.randint(0, 3, (2, 1, 8, 8, 8)).float()
    p = torch.softmax(logits, 1)
    g = torch.nn.functional.one_hot(y[:, 0].long(), 3).permute(0, 4, 1, 2, 3).float()
    dims = (2, 3, 4)  # per case and class, then the mean (MONAI's default reduction)
    fg = slice(1, None)  # include_background=False
    inter, sums = (p * g).sum(dims), p.sum(dims) + g.sum(dims)
    dice = (1 - (2 * inter + 1e-5) / (sums + 1e-5))[:, fg].mean()
    ce = torch.nn.functional.cross_entropy(logits, y[:, 0].long())
    paper = (1 - (2 * inter + 1) / ((p * p).sum(dims) + (g * g).sum(dims) + 1))[:, fg].mean()
    batch_inter, batch_sums = (p * g).sum((0, *dims)), (p.sum((0, *dims)) + g.sum((0, *dims)))
    batch_dice = (1 - (2 * batch_inter + 1e-5) / (batch_sums + 1e-5))[fg].mean()
    expected = {"dice": dice, "ce": ce, "dice_ce": dice + ce, "paper_dice": paper}
    for name, value in expected.items():
        got = SegLoss({"name": name})(logits, y)
        assert got.item() == pytest.approx(value.item(), rel=1e-5), name
    assert SegLoss({"name": "dice", "batch": True})(logits, y).item() == pytest.approx(batch_dice.item(), rel=1e-5)
    half = SegLoss({"name": "dice_ce", "lambda_ce": 0.5})(logits, y)
    assert half.item() == pytest.approx((dice + 0.5 * ce).item(), rel=1e-5)


def test_area_label_mode_soft_targets():
    """A 1-voxel structure vanishes from a nearest-downsampled label but not from an area-averaged one."""
    y = torch.zeros(1, 1, 8, 8, 8)
    y[0, 0, 2, 2, 2] = 1  # MONAI resizes with nearest-exact: by 2 it keeps the odd voxels only
    coarse = torch.zeros(1, 2, 4, 4, 4, requires_grad=True)
    full = torch.zeros(1, 2, 8, 8, 8)
    nearest = SegLoss({"name": "ce"}, [0.0, 1.0], "nearest")
    area = SegLoss({"name": "ce"}, [0.0, 1.0], "area")
    nearest([full, coarse], y).backward()
    g_near = coarse.grad[0, 1, 1, 1, 1].item()
    coarse.grad = None
    area([full, coarse], y).backward()
    g_area = coarse.grad[0, 1, 1, 1, 1].item()
    assert g_near > 0  # nearest: the structure is gone, class 1 is pushed down there
    assert g_area < g_near  # area: 1/8 of that voxel is class 1, the push is weaker (toward the soft target)
    # a full-resolution head gets the exact one-hot target in both modes
    logits = torch.randn(1, 2, 8, 8, 8)
    torch.testing.assert_close(
        SegLoss({"name": "ce"}, "equal", "area")([logits], y), SegLoss({"name": "ce"}, "equal", "nearest")([logits], y)
    )


def test_sliding_window_prediction_covers_whole_volume():
    m = _module().eval()
    x = _batch(1, (37, 21, 19))["image"]
    with torch.no_grad():
        logits = m.predict_logits(x)
    assert logits.shape == (1, 3, 37, 21, 19)
    assert torch.isfinite(logits).all()
