from __future__ import annotations

import pytest
import torch

from seg.data.transforms import Preprocessing
from seg.inference.bundle import BundleMeta, save_weights, write_bundle_meta
from seg.nn import create_net
from seg.nn.inferer import InfererSpec

PATCH = {
    "mode": "patch",
    "spacing": None,
    "orientation": "RAS",
    "normalize": {"mode": "zscore", "nonzero": True},
    "crop_foreground": "none",
}


def make_bundle(root, labels=None, channels=("T1",), folds=(0, 1), preprocessing=None, threshold=None):
    """A bundle of untrained tiny U-Nets (enough for grids, robustness and ensembling)."""
    labels = labels or {0: "background", 1: "lesion"}
    net = {
        "name": "unet",
        "spatial_dims": 3,
        "in_channels": len(channels),
        "out_channels": len(labels),
        "filters": [4, 8, 8],
    }
    for k in folds:
        torch.manual_seed(k)
        kw = dict(net)
        save_weights(create_net(kw.pop("name"), **kw).state_dict(), root / f"fold_{k}" / "weights.pt")
    write_bundle_meta(root, bundle_meta(net, labels, channels, preprocessing or PATCH, folds, threshold))
    return root


def bundle_meta(net, labels, channels, preprocessing, folds, threshold=None, inferer=None) -> BundleMeta:
    return BundleMeta(
        net=net,
        labels=dict(labels),
        channel_names=list(channels),
        preprocessing=Preprocessing.from_mapping(preprocessing),
        inferer=InfererSpec.from_mapping(inferer or {"roi_size": [32, 32, 32], "overlap": 0.25, "sw_batch_size": 2}),
        folds=list(folds),
        threshold=threshold,
    )


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("bundle") / "model")
