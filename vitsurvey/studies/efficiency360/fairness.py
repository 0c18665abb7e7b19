"""Fairness, as we read S1's dimension: accuracy per class (fairlearn's MetricFrame, the class as the group:
our data have no demographic attribute), the worst class and the gap between best and worst."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from torch import Tensor

__all__ = ["fairness_summary", "per_class_accuracy"]


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
