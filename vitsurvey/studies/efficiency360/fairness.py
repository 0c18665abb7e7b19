"""Fairness, as we read S1's dimension: accuracy per class (fairlearn's MetricFrame, the class as the group:
our data have no demographic attribute), the worst class and the gap between best and worst; and Hooker et al.'s
question (*Characterising bias in compressed models*, 2020), whether compression takes more from some classes
(e.g. those rare in training) than from the others (:func:`damage_gap`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from torch import Tensor

__all__ = ["damage_gap", "fairness_summary", "per_class_accuracy"]


def per_class_accuracy(labels: Tensor, predictions: Tensor, classes: Sequence[str] | None = None) -> pd.DataFrame:
    """Accuracy (%) and count per true class, via fairlearn's MetricFrame with the class as the group. Every
    class must occur: an empty class would have no accuracy, and its absence would hide a failure."""
    from fairlearn.metrics import MetricFrame
    from sklearn.metrics import accuracy_score

    y, p = labels.numpy(), predictions.numpy()
    if y.shape != p.shape or y.ndim != 1 or y.size == 0:
        raise ValueError(f"Expected as many predictions as labels (one each), got {p.shape} and {y.shape}.")
    names = list(classes) if classes is not None else [str(c) for c in range(int(max(y.max(), p.max())) + 1)]
    missing = [names[c] for c in range(len(names)) if not (y == c).any()]
    if missing:
        raise ValueError(f"No images of class(es) {', '.join(missing)}: per-class accuracy needs every class in the "
                         "test set; pass a test set that has them, or the classes that occur.")
    frame = MetricFrame(metrics={"accuracy": accuracy_score, "n": lambda t, _: len(t)}, y_true=y, y_pred=p,
                        sensitive_features=pd.Series([names[c] for c in y], name="class"))
    out = frame.by_group.reset_index()
    out["accuracy"] = 100.0 * out["accuracy"].astype(float)
    out["n"] = out["n"].astype(int)
    return out.set_index("class").loc[names].reset_index()


def fairness_summary(table: pd.DataFrame) -> dict[str, float]:
    """Mean, worst and best per-class accuracy, and the gap between best and worst (percentage points)."""
    acc = table["accuracy"]
    return {"mean class accuracy": float(acc.mean()), "worst class accuracy": float(acc.min()),
            "best class accuracy": float(acc.max()), "class gap": float(acc.max() - acc.min())}


def damage_gap(compressed: Sequence, uncompressed: Sequence, group: np.ndarray, level: float = 0.95) -> dict[str, float]:
    """Does compression cost a group of test images (e.g. the classes rare in training) more than the others?

    ``compressed`` and ``uncompressed``: one entry per training seed (the same seeds, in order), each whether every
    test image was classified right (N booleans), by the compressed model and by the model it was made from;
    ``group``: N booleans, the images of the group. With d = compressed - uncompressed correctness (points), the
    change is measured in the group and in the rest, and ``gap`` = change(group) - change(rest): below 0, the
    compression takes more from the group. Its standard error holds the seeds' spread of the gap and the images'
    (the seed-averaged d over the images of each side); the interval is Student's t with Welch-Satterthwaite
    degrees of freedom, as :func:`vitsurvey.metrics.seeded_comparison`."""
    from scipy.stats import t

    a, b = np.atleast_2d(np.asarray(compressed, dtype=float)), np.atleast_2d(np.asarray(uncompressed, dtype=float))
    g = np.asarray(group, dtype=bool)
    if a.shape != b.shape or a.shape[1] != g.shape[0]:
        raise ValueError(f"Expected compressed and uncompressed as (seeds, N) correctness and a group of N booleans; "
                         f"got {a.shape}, {b.shape} and {g.shape}.")
    n_in, n_out = int(g.sum()), int((~g).sum())
    if n_in < 2 or n_out < 2:
        raise ValueError(f"Both the group and the rest need at least two test images, got {n_in} and {n_out}.")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level is a probability between 0 and 1 (e.g. 0.95), not {level}.")
    d = 100.0 * (a - b)
    k = d.shape[0]
    per_seed = d[:, g].mean(1) - d[:, ~g].mean(1)
    gap = float(per_seed.mean())
    avg = d.mean(0)
    parts = [avg[g].var(ddof=1) / n_in, avg[~g].var(ddof=1) / n_out]
    dofs = [n_in - 1, n_out - 1]
    if k > 1:
        parts.append(per_seed.var(ddof=1) / k)
        dofs.append(k - 1)
    total = float(sum(parts))
    se = math.sqrt(total)
    if se == 0.0:
        low = high = gap
        p = 1.0 if gap == 0 else 0.0
    else:
        denominator = sum(v**2 / f for v, f in zip(parts, dofs))
        df = total**2 / denominator if denominator > 0 else float(max(k - 1, 1))
        half = float(t.ppf(0.5 + level / 2, df)) * se
        low, high, p = gap - half, gap + half, float(2.0 * t.sf(abs(gap) / se, df))
    return {"change in group": float(d[:, g].mean()), "change in rest": float(d[:, ~g].mean()), "gap": gap,
            "se": se, "low": low, "high": high, "p": p, "seeds": k}
