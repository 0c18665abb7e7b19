"""Probabilistic behaviour, as we read S1's dimension: expected calibration error (torchmetrics), a
reliability table, and what temperature scaling does to both. Each works on logits already computed
(:func:`~vitsurvey.studies.efficiency360.evaluation.logits_of`), so one forward pass serves all three.
"""

from __future__ import annotations

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from ... import checks

__all__ = ["calibration", "fit_temperature", "reliability"]


def _check_logits(logits: Tensor, labels: Tensor, what: str) -> None:
    """Fail, naming the problem, unless ``logits`` is (N, classes) with N >= 1 and one label each: an empty set has
    no calibration error and no temperature (torchmetrics would return NaN, the fit its starting point 1.0)."""
    if logits.ndim != 2 or labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"{what}: expected logits (N, classes) and N labels, got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}.")
    if logits.shape[0] == 0:
        raise ValueError(f"{what}: no images (0 logits): pass the logits and labels of at least one image.")


def calibration(logits: Tensor, labels: Tensor, bins: int = 15) -> dict[str, float]:
    """Top-1 (%), negative log-likelihood and expected calibration error (torchmetrics, ``bins`` equal-width
    confidence bins, L1: the gap between confidence and accuracy, weighted by the bin's share of images)."""
    from torchmetrics.functional.classification import multiclass_calibration_error

    _check_logits(logits, labels, "calibration")
    checks.whole("bins", bins, 1)
    ece = multiclass_calibration_error(logits.softmax(-1), labels, num_classes=logits.shape[1], n_bins=bins, norm="l1")
    return {"top1": 100.0 * (logits.argmax(-1) == labels).float().mean().item(),
            "nll": F.cross_entropy(logits, labels).item(), "ece": float(ece)}


def reliability(logits: Tensor, labels: Tensor, bins: int = 15) -> pd.DataFrame:
    """The reliability diagram's data: per confidence bin, the mean confidence, the accuracy and the count
    (empty bins left out). The ECE is the count-weighted mean of |accuracy - confidence|."""
    conf, pred = logits.softmax(-1).max(-1)
    edges = torch.linspace(0, 1, bins + 1)
    idx = torch.bucketize(conf, edges[1:-1], right=True)
    rows = []
    for b in range(bins):
        mask = idx == b
        if mask.any():
            rows.append({"bin low": edges[b].item(), "bin high": edges[b + 1].item(), "confidence": conf[mask].mean().item(),
                         "accuracy": (pred[mask] == labels[mask]).float().mean().item(), "count": int(mask.sum())})
    return pd.DataFrame(rows)


def fit_temperature(logits: Tensor, labels: Tensor) -> float:
    """The temperature T > 0 that minimises the negative log-likelihood of ``logits / T`` (Guo et al., 2017);
    fit it on held-out images, not on those it is evaluated on."""
    _check_logits(logits, labels, "fit_temperature")
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200)

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())
