"""Predict one case: the training pre-processing, the network(s), and the exact inverse.

Shared by out-of-fold validation predictions (k-fold) and ``seg-predict``.
"""

from __future__ import annotations

import itertools
import logging
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai import transforms as T

from seg.config import Precision
from seg.data.cascade import previous_channel_names, probabilities_image
from seg.data.datalist import DatasetSpec
from seg.data.inverse import invert_to_original
from seg.data.postprocess import Postprocessing
from seg.data.resample import slabs
from seg.data.transforms import Preprocessing, deterministic_transforms
from seg.inference.engines import TorchNet, as_engine_net
from seg.io import on_grid_of, save_nifti
from seg.nn.inferer import InfererSpec, class_index, sliding_window

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    probabilities: torch.Tensor  # [K, *S] on the input's grid, float32
    labels: np.ndarray  # [*S] label ids (the dataset's own ids) on the input's grid, as label_dtype gives them
    reference: nib.Nifti1Image  # the input (first channel), whose grid the outputs share
    seconds: dict = field(default_factory=dict)  # per stage
    removed: dict = field(default_factory=dict)  # label id -> components the postprocessing removed


def label_dtype(label_ids) -> type:
    """The smallest unsigned type that holds every label id: uint8 up to 255, else uint16."""
    return np.uint8 if max(label_ids, default=0) <= 255 else np.uint16


def softmax_(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over classes ``[B, K, *S]`` in place, a slab of the first spatial axis at a time (the whole
    volume's softmax would allocate a second copy of the largest tensor in prediction)."""
    for a, b in slabs(logits.shape[2:]):
        logits[:, :, a:b] = torch.softmax(logits[:, :, a:b], 1)
    return logits


class Predictor:
    """Turns NIfTI input(s) of one case into probabilities and a label map on the input's own grid.

    Args:
        nets: one engine net per fold and member (``seg.inference.engines``: torch or ONNX Runtime), or plain
            PyTorch modules (run by the torch engine); ensembled by mean softmax.
        labels: label id -> name (background 0 included), in class order.
        channel_names: input channel names.
        preprocessing: the pre-processing the nets were trained with (a
            :class:`~seg.data.transforms.Preprocessing`, or its mapping).
        inferer: the sliding-window spec the nets were validated with (from the bundle); resize mode runs
            the whole resized volume whatever its ``roi_size``.
        tta: average over the mirrorings of ``mirror_axes`` (every subset: 8 for three axes, 1 for none).
        mirror_axes: the axes training mirrored (a bundle records them); None: all three.
        device: torch device.
        threshold: for two-class models, foreground where its probability >= threshold (None: argmax).
        precision: ``fp32``, or ``bf16`` (torch nets under bf16 autocast; softmax and the ensemble stay in
            fp32); ONNX Runtime nets run as they were exported.
        postprocessing: applied to the label map on the input's grid (see :mod:`seg.data.postprocess`).
        previous: a cascade's first stage (a Predictor of the same labels): its foreground probabilities on the
            input's grid join the image channels (:mod:`seg.data.cascade`); :meth:`predict` runs it unless the
            case gives them as one more file (the k-fold run's out-of-fold files).
    """

    def __init__(
        self,
        nets: Sequence,
        labels: Mapping[int, str],
        channel_names: Sequence[str],
        preprocessing: Preprocessing | Mapping,
        inferer: InfererSpec | None = None,
        tta: bool = False,
        device: str | torch.device = "cpu",
        threshold: float | None = None,
        precision: str = "fp32",
        postprocessing: Postprocessing | None = None,
        mirror_axes: Sequence[int] | None = None,
        previous: Predictor | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.previous = previous
        self.nets = [as_engine_net(n, self.device, precision) for n in nets]
        self.precision = precision
        self.label_ids = sorted(labels)
        self.spec = DatasetSpec(root=".", layout="msd", channel_names=list(channel_names), labels=dict(labels))
        self.spec.previous_channels = previous_channel_names(labels) if previous is not None else []
        inferer = inferer or InfererSpec()
        if not isinstance(preprocessing, Preprocessing):  # a mapping may still name the patch (the window)
            inferer = inferer.for_data(preprocessing.get("mode", "patch"), preprocessing.get("patch_size"))
            preprocessing = Preprocessing.from_mapping(preprocessing)
        self.mode = preprocessing.mode
        self.transform = T.Compose(deterministic_transforms(self.spec, with_label=False, **preprocessing.as_dict()))
        self.inferer = inferer
        self.tta = tta
        self.mirror_axes = [0, 1, 2] if mirror_axes is None else sorted(int(a) for a in mirror_axes)
        self.threshold = threshold
        self.postprocessing = postprocessing or Postprocessing()

    @property
    def precision(self) -> str:
        return self._precision

    @precision.setter
    def precision(self, value: str) -> None:
        """fp32 or bf16 for every torch engine net (the bf16 check switches between the two)."""
        self._precision = Precision.parse(value).value
        if self.previous is not None:
            self.previous.precision = value
        for n in self.nets:
            if isinstance(n, TorchNet):
                n.precision = self._precision

    def _forward(self, net, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "resize":
            return net(x)
        return sliding_window(net, x, self.inferer)

    @torch.inference_mode()
    def probabilities(self, image: torch.Tensor) -> torch.Tensor:
        """Mean softmax over nets (and mirrorings) on the pre-processed grid: ``[C, *S'] -> [K, *S']``."""
        x = image.as_tensor() if hasattr(image, "as_tensor") else image
        x = x[None].to(self.device, torch.float32)
        spatial = [2 + a for a in self.mirror_axes if 2 + a < x.ndim]  # the axes training mirrored
        flips = (
            [()] + [c for r in range(1, len(spatial) + 1) for c in itertools.combinations(spatial, r)]
            if self.tta
            else [()]
        )
        acc = None
        for net in self.nets:
            for f in flips:
                xi = torch.flip(x, f) if f else x
                p = softmax_(self._forward(net, xi).float())
                p = torch.flip(p, f) if f else p
                acc = p if acc is None else acc.add_(p)
                del p
        return acc.div_(len(self.nets) * len(flips))[0].cpu()

    def labels_from(self, prob: torch.Tensor) -> np.ndarray:
        """Class probabilities ``[K, *S]`` -> label ids ``[*S]`` (:func:`label_dtype` of the largest id), a slab
        of the first axis at a time (an int64 argmax of the whole volume would be 8 bytes a voxel)."""
        lut = torch.tensor(self.label_ids, dtype=torch.int64)
        out = np.empty(prob.shape[1:], dtype=label_dtype(self.label_ids))
        for a, b in slabs(prob.shape[1:]):
            p = prob[:, a:b]
            if self.threshold is not None and prob.shape[0] == 2:
                cls = (p[1] >= self.threshold).to(torch.int64)
            else:
                cls = class_index(p, 0)
            out[a:b] = lut[cls].numpy()
        return out

    def _previous_stage(self, paths: list[str], out: Path) -> tuple[list[str], str]:
        """A cascade's case: its images and the first stage's probabilities file (the case's last file where it
        gives one more than the images, else the first stage's prediction written to ``out``)."""
        n = len(self.spec.channel_names)
        if len(paths) == n + 1:
            return paths[:n], paths[n]
        first = self.previous.predict(paths)
        save_nifti(probabilities_image(first.probabilities[1:].numpy(), first.reference), out)
        return paths, str(out)

    def predict(self, image_paths: str | Sequence[str]) -> Prediction:
        """Predict one case from its channel file(s)."""
        t = {"start": time.perf_counter()}
        paths = [image_paths] if isinstance(image_paths, str) else list(image_paths)
        with tempfile.TemporaryDirectory(prefix="seg-cascade-") as tmp:
            item = {"image": paths[0]}
            if self.previous is not None:
                paths, item["prev"] = self._previous_stage(paths, Path(tmp) / "previous.nii")
            item["image"] = paths[0] if len(paths) == 1 else paths
            data = self.transform(item)
        image = data["image"]
        t["preprocess"] = time.perf_counter()
        prob = self.probabilities(image)
        t["infer"] = time.perf_counter()
        prob_orig = invert_to_original(prob, image, self.transform).as_tensor().float()
        del data, image, prob  # the pre-processed grid's tensors: the largest of a finer-resolution model
        t["invert"] = time.perf_counter()
        ref = nib.load(paths[0])
        if tuple(prob_orig.shape[1:]) != tuple(ref.shape[:3]):
            raise RuntimeError(
                f"{paths[0]}: inverted prediction has shape {list(prob_orig.shape[1:])}, input {list(ref.shape[:3])}"
            )
        labels = self.labels_from(prob_orig)
        labels, removed = self.postprocessing.apply(labels, ref.header.get_zooms()[:3])
        t["labels"] = time.perf_counter()
        names = ["preprocess", "infer", "invert", "labels"]
        prev = t["start"]
        secs = {}
        for n in names:
            secs[n] = t[n] - prev
            prev = t[n]
        return Prediction(prob_orig, labels, ref, secs, removed)


def mask_image(labels: np.ndarray, reference: nib.Nifti1Image) -> nib.Nifti1Image:
    """A label image on exactly the reference's grid (its affine, qform/sform and codes), as uint8 when every id
    fits, else uint16: label 256 written as uint8 would be 0, background."""
    return on_grid_of(labels, reference, label_dtype([int(labels.max(initial=0))]))


def save_mask(labels: np.ndarray, reference: nib.Nifti1Image, path) -> None:
    """Write a label map atomically on the reference's grid."""
    save_nifti(mask_image(labels, reference), path)
