from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from seg.cli.common import CONF_DIR
from seg.nn import create_net, list_nets

SMALL = {
    "agunet": {"filters": [4, 8, 16]},
    "daunet": {"filters": [4, 8, 16], "guided": True},
    "unet_local_attn": {"filters": [8, 16, 16], "local_attention_kernel": 3},
    "transdae": {"dims": [16, 32, 32], "heads": [1, 2, 2], "depths": [1, 1, 1]},
    "unet": {"filters": [4, 8, 16]},
    "monai_unet": {"channels": [4, 8, 16], "num_res_units": 1},
    "monai_attention_unet": {"channels": [4, 8, 16]},
    "swinunetr": {"feature_size": 12, "depths": [1, 1, 1, 1]},
}


def test_every_registered_net_has_a_small_case():
    assert set(list_nets()) <= set(SMALL) | set(EXTRA_SMALL)


EXTRA_SMALL: dict = {}


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("spatial_dims, shape", [(3, (19, 22, 13)), (2, (37, 50))], ids=["3d-odd", "2d-odd"])
def test_forward_backward_eval(name, spatial_dims, shape):
    if name == "swinunetr" and spatial_dims == 2:
        pytest.skip("SwinUNETR baseline is run in 3D only here")
    torch.manual_seed(0)
    net = create_net(name, spatial_dims=spatial_dims, in_channels=2, out_channels=3, **SMALL[name])
    x = torch.randn(2, 2, *shape)
    y = net(x)
    ys = y if isinstance(y, list) else [y]  # deep supervision: a list in training
    assert ys[0].shape == (2, 3, *shape)
    sum(o.square().mean() for o in ys).backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None, f"{name}: no gradient for {pname}"
        assert torch.isfinite(p.grad).all(), pname
    net.eval()
    with torch.no_grad():
        assert net(x).shape == (2, 3, *shape)


def test_unknown_net_suggests():
    with pytest.raises(KeyError, match="did you mean 'unet'"):
        create_net("unte")


@pytest.mark.parametrize("path", sorted((Path(CONF_DIR) / "model" / "net").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_net_config_instantiates(path):
    cfg = OmegaConf.load(path)
    small = SMALL.get(cfg.name, {})
    net = instantiate(cfg, in_channels=1, out_channels=2, **small).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 16, 16, 16)).shape == (1, 2, 16, 16, 16)
