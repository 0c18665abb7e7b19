"""The 360 card: every per-model dimension of S1 measured on one model, one row per quantity with its standard
error where one is defined (:func:`card`), and several cards set against a reference model's
(:func:`relative_to`). The dimensions that train a model (privacy by DP, inclusiveness by imbalance,
continual learning) are separate experiments, not rows of the card.

Spectral complexity is not on the card. Bartlett et al.'s measure is a product of the weight matrices' norms, and
a ViT's LayerNorms make that product unidentifiable: scaling every matrix that writes into the residual stream
(patch embedding, attention and MLP output projections) by the same factor scales the stream, which every
LayerNorm divides out again, so the model computes exactly the same function while the measure changes by a power
of the factor (and the LayerNorm gains trade scale with the matrices after them in the same way). Dividing it by
the margin (Bartlett et al.'s normalisation) does not help, as the margin is a property of the unchanged
function. :func:`~vitsurvey.studies.efficiency360.complexity.spectral_complexity` remains, for networks without
normalisation."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from ...metrics import top1_se
from .approximation import agreement
from .evaluation import check_images, logits_of, top1_of
from .fairness import fairness_summary, per_class_accuracy
from .inclusiveness import who_can_run
from .privacy import membership_auc
from .probabilistic import calibration, fit_temperature
from .robustness import adversarial_accuracy, corrupted_correctness
from .transparency import deletion_versus_random, explainable, rollout_agreement

if TYPE_CHECKING:
    from ...data import DatasetInfo

__all__ = ["auc_se", "card", "relative_to"]


def auc_se(auc: float, n_pos: int, n_neg: int) -> float:
    """Standard error of an ROC AUC (Hanley & McNeil, 1982)."""
    if n_pos < 1 or n_neg < 1:
        raise ValueError(f"An AUC needs positives and negatives, got {n_pos} and {n_neg}.")
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc**2) + (n_neg - 1) * (q2 - auc**2)) / (n_pos * n_neg)
    return math.sqrt(max(var, 0.0))


def _ece_se(logits: Tensor, labels: Tensor, bins: int, resamples: int, seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    values = [calibration(logits[idx], labels[idx], bins)["ece"]
              for idx in (torch.randint(0, len(labels), (len(labels),), generator=g) for _ in range(resamples))]
    return float(np.std(values, ddof=1))


def card(
    model: nn.Module,
    test: tuple[Tensor, Tensor],
    members: tuple[Tensor, Tensor],
    info: DatasetInfo,
    held_out: tuple[Tensor, Tensor] | None = None,
    epsilon: float = 2 / 255,
    severity: int = 3,
    bins: int = 15,
    resamples: int = 100,
    seed: int = 0,
    reference: nn.Module | None = None,
    macs: float | None = None,
    source: nn.Module | None = None,
    explain: int = 256,
) -> pd.DataFrame:
    """The 360 card of one model: one row per measured quantity, with its dimension, value, standard error
    (where one is defined) and what a better value is (``higher``/``lower``).

    ``test``: (images, labels) for accuracy, robustness, calibration and fairness. ``members``: training images
    of the model, against which ``test`` serves as the non-members of the membership attack (use as many of
    each). ``held_out``: images to fit the temperature on (default: the first half of ``test``, then every
    calibration number is taken on the second half). Corruptions are averaged at ``severity``; FGSM uses
    ``epsilon`` in pixel units, crafted on ``source`` (default: the model; see :func:`adversarial_accuracy`).
    ``reference``: the model this one was compressed from (adds the approximation rows, :func:`agreement`);
    ``macs``: its multiply-accumulates per image, counted by the caller (adds computational complexity).
    Transparency rows (for vitsurvey's ViT with a class token: the deletion-curve area of its attention
    rollout over that of its own random deletion order, :func:`deletion_versus_random`, and against a
    ``reference`` ViT with the same patches, how well their rollouts correlate) use the first ``explain`` test
    images (0: leave them out).

    The corruption row is the mean top-1 over the corruptions, all applied to the same images: its standard
    error is that of each image's share of corruptions it survives (the corruptions paired on the image).
    """
    x, y = test
    check_images(x, y)
    if held_out is None:
        half = len(y) // 2
        if half < 1:
            raise ValueError("The test set needs at least two images to hold half out for the temperature.")
        held_out, (cx, cy) = (x[:half], y[:half]), (x[half:], y[half:])
    else:
        cx, cy = x, y
    rows: list[dict[str, object]] = []

    def add(dimension: str, quantity: str, value: float, se: float | None, better: str, n: int) -> None:
        rows.append({"dimension": dimension, "quantity": quantity, "value": value, "se": se, "better": better, "n": n})

    top1 = top1_of(model, x, y)
    add("accuracy", "top-1 (%)", top1, top1_se(top1, len(y)), "higher", len(y))
    survived = 100.0 * corrupted_correctness(model, x, y, info, severity, seed=seed).float().mean(0)  # per image
    se_c = float(survived.std(unbiased=True)) / math.sqrt(len(y)) if len(y) > 1 else math.nan
    add("robustness", f"top-1 under corruption, severity {severity} (%)", float(survived.mean()), se_c, "higher",
        len(y))
    adv = adversarial_accuracy(model, x, y, info, (epsilon,), attacks=("fgsm",), source=source)
    adv_top1 = float(adv["top1"].iloc[0])
    add("robustness", f"top-1 under FGSM, epsilon {epsilon:.4f} (%)", adv_top1, top1_se(adv_top1, len(y)), "higher", len(y))
    c_logits = logits_of(model, cx)
    cal = calibration(c_logits, cy, bins)
    add("probabilistic", "expected calibration error", cal["ece"], _ece_se(c_logits, cy, bins, resamples, seed), "lower",
        len(cy))
    t = fit_temperature(logits_of(model, held_out[0]), held_out[1])
    scaled = c_logits / t
    add("probabilistic", "ECE after temperature scaling", calibration(scaled, cy, bins)["ece"],
        _ece_se(scaled, cy, bins, resamples, seed), "lower", len(cy))
    per_class = per_class_accuracy(y, logits_of(model, x).argmax(-1))
    fair = fairness_summary(per_class)
    worst_n = int(per_class.loc[per_class["accuracy"].idxmin(), "n"])
    add("fairness", "worst-class top-1 (%)", fair["worst class accuracy"],
        top1_se(fair["worst class accuracy"], worst_n), "higher", worst_n)
    add("fairness", "best minus worst class (points)", fair["class gap"], None, "lower", len(y))
    auc = membership_auc(model, members, test)
    add("privacy", "membership-inference AUC (loss threshold)", auc, auc_se(auc, len(members[1]), len(y)), "lower",
        len(y) + len(members[1]))
    cost = who_can_run(model, tuple(x.shape[1:]))  # type: ignore[arg-type]
    add("inclusiveness", "batch-1 latency on one CPU thread (ms)", cost["latency_1_thread_ms"], None, "lower", 1)
    add("inclusiveness", "inference memory at batch 1 (bytes)", cost["memory_bytes"], None, "lower", 1)
    add("inclusiveness", "saved model size (bytes)", cost["size_bytes"], None, "lower", 1)
    if reference is not None:
        close = agreement(model, reference, x)
        add("approximation", "top-1 agreement with the reference (%)", close["agreement"],
            top1_se(close["agreement"], len(y)), "higher", len(y))
        add("approximation", "KL divergence from the reference (nats)", close["kl"], None, "lower", len(y))
    if explain > 0 and explainable(model):
        ex = x[:explain]
        deletion = deletion_versus_random(model, ex, seed)
        add("transparency", "deletion area, rollout order / random order", float(deletion["ratio"]), None, "lower",
            len(ex))
        if reference is not None and explainable(reference) and reference.cfg.grid == model.cfg.grid:
            agree = rollout_agreement(model, reference, ex)
            add("transparency", "rollout correlation with the reference", agree["correlation"], agree["se"], "higher",
                len(ex))
    if macs is not None:
        add("computational complexity", "MACs per image", float(macs), None, "lower", 1)
    return pd.DataFrame(rows)


def relative_to(cards: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Cards of several models (:func:`card` rows with a ``model`` column) against the ``reference`` model's:
    ``relative`` is the value over the reference's where higher is better and the reference's over the value
    where lower is better, so above 1 is better than the reference on every row (for a ``log10`` quantity, the
    ratio of the quantities themselves); ``relative se`` propagates both standard errors (first order), where
    both are known. Rows with a value or reference value of 0 are dropped."""
    if "model" not in cards.columns or reference not in set(cards["model"]):
        raise ValueError(f"No card of {reference!r} among the models: {sorted(set(cards.get('model', [])))}.")
    ref = cards[cards["model"] == reference].set_index("quantity")
    out = cards[cards["quantity"].isin(ref.index)].copy()
    r_value, r_se = out["quantity"].map(ref["value"]).astype(float), out["quantity"].map(ref["se"]).astype(float)
    value, se = out["value"].astype(float), out["se"].astype(float)
    keep = (r_value != 0) & (value != 0)
    higher = out["better"] == "higher"
    logs = out["quantity"].str.startswith("log10 ")  # a ratio of what the logarithm measures, not of logarithms
    keep = keep | logs
    sign = np.where(higher, 1.0, -1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["relative"] = np.where(logs, 10.0 ** (sign * (value - r_value)),
                                   np.where(higher, value / r_value, r_value / value))
        out["relative se"] = np.abs(out["relative"]) * np.sqrt((se / value) ** 2 + (r_se / r_value) ** 2)
    return out[keep].reset_index(drop=True)
