"""The house palette: one colour per family everywhere, one shade per model; labels that never overlap."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from vitsurvey import plots  # noqa: E402


def test_families_keep_their_colour_and_models_their_shade():
    names = ["baseline", "baseline + same fine-tune (control)", "structured 60%", "magnitude 80%", "ToMe 13",
             "structured 60% -> ToMe 13 -> int8", "PTQ W8A8"]
    c = plots.colours(names)
    assert c["baseline"] == plots.FAMILY_COLOURS["baseline"] == "#000000"
    assert c["structured 60% -> ToMe 13 -> int8"] == plots.FAMILY_COLOURS["composition"]
    assert c["structured 60%"] == plots.FAMILY_COLOURS["pruning"] != c["magnitude 80%"]  # one family, two shades
    assert c["ToMe 13"] == plots.FAMILY_COLOURS["token reduction"] and c["PTQ W8A8"] == plots.FAMILY_COLOURS["quantization"]
    assert len(set(c.values())) == len(names)
    assert plots.colours(names) == c  # the same names, the same colours
    assert plots.colours(["odd name"], {"odd name": "distillation"})["odd name"] == plots.FAMILY_COLOURS["distillation"]
    with pytest.raises(ValueError, match="Unknown family"):
        plots.colours(["x"], {"x": "alchemy"})


def test_every_point_is_labelled_and_no_two_labels_overlap():
    rows = pd.DataFrame({"x": [1.0, 1.01, 1.02, 2.0, 2.01], "y": [1.0, 1.0, 1.01, 2.0, 2.0]},
                        index=["alpha", "beta", "gamma", "delta", "epsilon"])
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.scatter(rows["x"], rows["y"])
    plots.label_points(ax, rows, "x", "y")
    fig.canvas.draw()
    texts = [t for t in ax.texts if t.get_text() in rows.index]
    assert sorted(t.get_text() for t in texts) == sorted(rows.index)
    boxes = [t.get_window_extent() for t in texts]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), "two labels overlap"
    plt.close(fig)


def test_log_axis_labels_small_ticks_as_numbers():
    fig, ax = plt.subplots()
    ax.plot([0.01, 0.5], [1, 2])
    plots.log_axis(ax, "x")
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert "0.02" in labels and "0.0" not in labels
    plt.close(fig)
