"""Overlay montages cut through what is there: the largest component of each label, not the centroid of all."""

from __future__ import annotations

import numpy as np

from seg.eval.overlay import overlay_montage, overlay_rows


def _ball(shape, c, r):
    g = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    return ((g - np.asarray(c)) ** 2).sum(-1) <= r * r


def test_rows_cut_through_each_labels_largest_component(tmp_path):
    shape = (40, 40, 40)
    pred = np.zeros(shape, np.int64)
    # three lesions of label 1 at the corners: their joint centroid (~20, 20, 20) lies in none of them
    pred[_ball(shape, (6, 6, 6), 3)] = 1
    pred[_ball(shape, (33, 33, 6), 5)] = 1  # the largest
    pred[_ball(shape, (6, 33, 33), 2)] = 1
    ref = np.zeros(shape, np.int64)
    ref[_ball(shape, (20, 8, 30), 4)] = 2  # a label the prediction lacks
    rows = overlay_rows(pred, ref, {1: "meningioma", 2: "oedema"})
    assert [r[2] for r in rows] == [1, 2]
    assert rows[0][1] == [33, 33, 6] and "largest predicted component" in rows[0][0]
    assert rows[1][1] == [20, 8, 30] and "no foreground predicted" in rows[1][0] and rows[1][0].startswith("oedema")
    # nothing anywhere: one row saying so
    empty = overlay_rows(np.zeros(shape, np.int64), np.zeros(shape, np.int64))
    assert len(empty) == 1 and empty[0][0] == "no foreground predicted; reference empty" and empty[0][2] is None
    out = tmp_path / "o.png"
    overlay_montage(np.random.rand(*shape).astype(np.float32), pred, out, "case", np.eye(4), reference=ref)
    from PIL import Image

    w, h = Image.open(out).size
    assert h > w * 0.5  # two rows of panels, not one strip


def test_no_text_of_the_montage_runs_into_another():
    """#41: the worst-case overlay's row title sat over its first panel and a long label name ran into the next
    panel's title. Every text of a montage with long names lies apart from every other, inside the figure."""
    import matplotlib.pyplot as plt
    from matplotlib.text import Text

    from seg.eval.overlay import montage_figure

    shape = (40, 40, 40)
    pred = np.zeros(shape, np.int64)
    pred[_ball(shape, (10, 10, 10), 4)] = 1
    ref = pred.copy()
    ref[_ball(shape, (28, 28, 28), 4)] = 2
    names = {1: "left anterior hippocampus (head)", 2: "right posterior hippocampus (tail and body)"}
    fig = montage_figure(
        np.random.rand(*shape), pred, "case_001 (fold 3): foreground Dice 0.512", np.eye(4), ref, names
    )
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    titles = [t for ax in fig.get_axes() for t in (ax._left_title, ax.title, ax._right_title)]
    texts = titles + [f._suptitle for f in (fig, *fig.subfigs)]
    boxes = [(t.get_text(), t.get_window_extent(r)) for t in texts if isinstance(t, Text) and t.get_text()]
    assert sum(n in t for t, _ in boxes for n in names.values()) == 2 and len(boxes) >= 7
    for k, (ta, a) in enumerate(boxes):
        assert a.x0 >= 0 and a.y0 >= 0 and a.x1 <= fig.bbox.x1 and a.y1 <= fig.bbox.y1, ta
        for tb, b in boxes[k + 1 :]:
            assert not a.overlaps(b), (ta, tb)
    plt.close(fig)
