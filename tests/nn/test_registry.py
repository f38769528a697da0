from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from seg.config import CONF_DIR
from seg.nn import create_net, list_nets
from seg.nn.registry import FILTER_CAP, NetCard, build_sized, doubling_widths, net_card, plannable_nets, register_net

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


# -- net cards: what the planner and the exporter read instead of naming nets -------------------------------
@pytest.mark.parametrize("name", list_nets())
def test_every_net_has_a_card_whose_defaults_are_its_config(name):
    """The card's defaults are what conf/model/net/<name>.yaml builds (one checked truth, two readers)."""
    card = net_card(name)
    assert isinstance(card, NetCard) and card.summary
    cfg = OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "model" / "net" / f"{name}.yaml"))
    cfg.pop("_target_")
    assert cfg.pop("name") == name
    assert cfg == dict(card.defaults)


@pytest.mark.parametrize("name", plannable_nets())
def test_every_width_rule_builds_its_net_at_two_widths(name):
    """A card's width rule gives kwargs its net accepts, and a wider base gives more parameters."""
    card = net_card(name)
    sizes = []
    for base in (4, 8):
        kw = card.width_kwargs(base, 3)
        assert kw and set(kw) <= set(card.defaults) | {"heads", "dims"}
        net = build_sized(name, base, 3, 1, 2, **({"depths": [1, 1, 1, 1]} if name == "swinunetr" else {}))
        sizes.append(sum(p.numel() for p in net.parameters()))
    assert sizes[1] > sizes[0]


def test_width_rules_are_pinned():
    """nnU-Net's cap of 320 filters and the doubling per level; SwinUNETR's multiple of 12."""
    assert FILTER_CAP == 320
    assert doubling_widths(32, 5) == [32, 64, 128, 256, 320]
    assert net_card("unet").width_kwargs(8, 3) == {"filters": [8, 16, 32]}
    assert net_card("monai_unet").width_kwargs(8, 3) == {"channels": [8, 16, 32]}
    assert net_card("swinunetr").width_kwargs(8, 5) == {"feature_size": 24}
    assert net_card("transdae").width_kwargs(16, 3) == {"dims": [64, 128, 256], "heads": [2, 4, 8]}


def test_a_net_cannot_register_without_a_card():
    with pytest.raises(TypeError, match="NetCard"):
        register_net("cardless", None)  # type: ignore[arg-type]


def test_no_room_outside_nn_names_a_net():
    """The planner, the exporter and the runners read cards: no registered net's name as a string literal."""
    import ast

    names = set(list_nets())
    root = Path(__file__).resolve().parents[2] / "seg"
    offenders = []
    for path in root.rglob("*.py"):
        if path.is_relative_to(root / "nn"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names - {"unet"}:
                offenders.append(f"{path.relative_to(root)}:{node.lineno} {node.value!r}")
    assert not offenders, offenders
