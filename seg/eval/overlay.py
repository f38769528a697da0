"""PNG montages: three orthogonal slices through a structure with mask contours (reports, seg-predict --png)."""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from seg.io import atomic_write_bytes


def _to_ras(a: np.ndarray, affine: np.ndarray) -> np.ndarray:
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    return nib.orientations.apply_orientation(a, ornt)


def largest_component_centre(mask: np.ndarray) -> list[int] | None:
    """Voxel centre (rounded centroid) of the largest 26-connected component of ``mask``; None when empty."""
    from seg.data.components import centroid, largest_component

    c = centroid(largest_component(mask, connectivity=26))
    return None if c is None else [int(round(x)) for x in c]


def overlay_rows(
    pred: np.ndarray, ref: np.ndarray | None, label_names: Mapping[int, str] | None = None, max_rows: int = 4
) -> list[tuple[str, list[int], int | None]]:
    """The montage's rows: (title, voxel to cut through, label id) per label present in either map."""
    ids = sorted((set(np.unique(pred).tolist()) | (set(np.unique(ref).tolist()) if ref is not None else set())) - {0})
    label_names = dict(label_names or {})
    rows = []
    for i in ids[:max_rows]:
        centre = largest_component_centre(pred == i) or largest_component_centre(ref == i)
        lname = label_names.get(i, f"label {i}")
        state = "largest predicted component" if (pred == i).any() else "no foreground predicted (reference shown)"
        rows.append((f"{lname}: {state}", centre, i))
    if not rows:
        what = "no foreground predicted" + ("; reference empty" if ref is not None else "")
        rows.append((what, [s // 2 for s in pred.shape], None))
    return rows


def montage_figure(
    image: np.ndarray,
    prediction: np.ndarray | None,
    title: str = "",
    affine: np.ndarray | None = None,
    reference: np.ndarray | None = None,
    label_names: Mapping[int, str] | None = None,
    max_rows: int = 4,
):
    """A montage of three orthogonal slices per label (up to ``max_rows`` rows): each row cuts
    through the largest component of that label (in the prediction, else in the reference), with the
    prediction's contour in red and the reference's in green. A label the prediction lacks is titled "no
    foreground predicted"; with no foreground at all, one row through the volume's centre says so.
    ``image``, ``prediction`` and ``reference`` are ``[X, Y, Z]`` label maps; with the image's ``affine``
    they are reoriented to RAS first and the panels are sagittal, coronal and axial."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["axis 0", "axis 1", "axis 2"]
    pred = np.zeros(image.shape, np.int64) if prediction is None else np.asarray(prediction).astype(np.int64)
    ref = None if reference is None else np.asarray(reference).astype(np.int64)
    if affine is not None:
        image, pred = _to_ras(image, affine), _to_ras(pred, affine)
        ref = None if ref is None else _to_ras(ref, affine)
        names = ["sagittal", "coronal", "axial"]
    rows = overlay_rows(pred, ref, label_names, max_rows)
    fig = plt.figure(figsize=(9, 3.3 * len(rows)), layout="constrained")
    # a row's title spans its row (a subfigure's): over the first panel alone a long label name ran into the
    # next panel's title
    for (row_title, centre, i), sub in zip(rows, np.atleast_1d(fig.subfigures(len(rows), 1))):
        sub.suptitle(row_title, fontsize=8, x=0.01, ha="left")
        for ax, axis in zip(sub.subplots(1, 3), range(3)):
            sl = [slice(None)] * 3
            sl[axis] = centre[axis]
            ax.imshow(np.rot90(image[tuple(sl)]), cmap="gray")
            layers = [("red", pred)] + ([("lime", ref)] if ref is not None else [])
            for colour, m in layers:
                sm = (m[tuple(sl)] == i) if i is not None else np.zeros(1, bool)
                if sm.any():
                    ax.contour(np.rot90(sm), [0.5], colors=colour, linewidths=0.9)
            ax.set_title(f"{names[axis]}, slice {centre[axis]}", fontsize=8)
            ax.axis("off")
    legend = "red: prediction" + ("; green: reference" if ref is not None else "")
    fig.suptitle(f"{title}  ({legend})" if title else legend, fontsize=9)
    return fig


def overlay_montage(image: np.ndarray, prediction: np.ndarray | None, path: str | Path, *args, **kw) -> None:
    """:func:`montage_figure`, written to ``path`` as a PNG (atomically)."""
    import matplotlib.pyplot as plt

    fig = montage_figure(image, prediction, *args, **kw)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, lambda tmp: Path(tmp).write_bytes(buf.getvalue()))
