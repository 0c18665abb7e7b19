"""S1's "360" view of efficiency: one measured quantity per dimension, for any classifier and data set.

S1 (Patro & Agneeswaran, *Efficiency 360*) names ten dimensions beyond memory and compute; its tables could
not be obtained, so what each dimension measures here is our reading, stated with each function:

* robustness: accuracy under common corruptions at five severities, the corruption error relative to a
  reference model (Hendrycks & Dietterich's mCE, with our baseline in place of AlexNet), and accuracy under
  FGSM and PGD perturbations over an epsilon sweep;
* probabilistic behaviour: expected calibration error (torchmetrics), a reliability table, and what
  temperature scaling does to both;
* fairness: accuracy per class (fairlearn's MetricFrame, the class as the group: our data have no
  demographic attribute), the worst class and the gap;
* privacy: the AUC of a loss-threshold membership-inference attack (Yeom et al., 2018);
* transparency: attention rollout maps (Abnar & Zuidema, 2020) and their faithfulness, by a deletion curve;
* inclusiveness: what it takes to run the model on the smallest machine (one CPU thread, batch 1);
* continual learning: class-incremental training over task splits, with average accuracy and forgetting, for
  naive fine-tuning and a replay buffer.

:func:`card` gathers the per-model ones for one model. Still to come: differentially private training and
accuracy on under-represented classes after imbalanced training.

Every function takes standardised images (as :func:`vitsurvey.data.load` returns them) and returns a tidy
table or a number. Perturbations are applied in pixel space, [0, 1] per channel, and standardised again, so
an epsilon or a noise level means the same thing on every data set. Nothing here trains: the models come
from the notebooks' own routines.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import DatasetInfo, from_pixels, to_pixels

SEVERITIES = (1, 2, 3, 4, 5)
"""Corruption severities, as in ImageNet-C; severity 0 is the clean image."""


def _check_images(images: Tensor, labels: Tensor) -> None:
    if images.ndim != 4:
        raise ValueError(f"Expected images of shape (N, C, H, W), got {tuple(images.shape)}.")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"Expected one label per image: {images.shape[0]} images, labels of shape {tuple(labels.shape)}.")
    if images.shape[0] == 0:
        raise ValueError("No images given: pass at least one image and its label.")


@torch.no_grad()
def logits_of(model: nn.Module, images: Tensor, batch_size: int = 256) -> Tensor:
    """The model's logits for every image, in eval mode, in batches."""
    model.eval()
    return torch.cat([model(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


# --------------------------------------------------------------------------- robustness: corruptions


def _blur(x: Tensor, sigma: float) -> Tensor:
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


# Each corruption maps pixels in [0, 1] and a severity 1-5 to corrupted pixels. The noise, contrast and
# brightness constants are ImageNet-C's (Hendrycks & Dietterich, 2019), which do not depend on image size;
# ImageNet-C's blur radii are for 224-pixel images, so the blur's are ours, for 28-32-pixel ones.
CORRUPTIONS: dict[str, Callable[[Tensor, int, torch.Generator], Tensor]] = {
    "gaussian noise": lambda x, s, g: x + torch.randn(x.shape, generator=g) * (0.08, 0.12, 0.18, 0.26, 0.38)[s - 1],
    "shot noise": lambda x, s, g: torch.poisson(x.clamp(0, 1) * (60, 25, 12, 5, 3)[s - 1], generator=g)
    / (60, 25, 12, 5, 3)[s - 1],
    "gaussian blur": lambda x, s, g: _blur(x, (0.5, 0.75, 1.0, 1.5, 2.0)[s - 1]),
    "contrast": lambda x, s, g: (x - x.mean((1, 2, 3), keepdim=True)) * (0.4, 0.3, 0.2, 0.1, 0.05)[s - 1]
    + x.mean((1, 2, 3), keepdim=True),
    "brightness": lambda x, s, g: x + (0.1, 0.2, 0.3, 0.4, 0.5)[s - 1],
}
"""Common corruptions, written here because the maintained package (imagecorruptions) works on RGB uint8
images of ImageNet size through OpenCV and scikit-image, not on 28-pixel grey-scale tensors."""


def corrupt(images: Tensor, info: DatasetInfo, name: str, severity: int, seed: int = 0) -> Tensor:
    """``images`` (standardised) with corruption ``name`` at ``severity`` (0: unchanged, 1-5), standardised again.
    The corrupted pixels are clipped to [0, 1], as a stored image would be."""
    if name not in CORRUPTIONS:
        raise ValueError(f"Unknown corruption {name!r}; choose one of {', '.join(CORRUPTIONS)}.")
    if isinstance(severity, bool) or not isinstance(severity, int) or not 0 <= severity <= 5:
        raise ValueError(f"severity must be a whole number from 0 (clean) to 5, not {severity!r}.")
    if severity == 0:
        return images.clone()
    g = torch.Generator().manual_seed(seed)
    pixels = CORRUPTIONS[name](to_pixels(images, info), severity, g).clamp(0.0, 1.0)
    return from_pixels(pixels, info)


def corruption_accuracy(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    info: DatasetInfo,
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] = SEVERITIES,
    seed: int = 0,
) -> pd.DataFrame:
    """Top-1 (%) under each corruption at each severity: one row per (corruption, severity), with ``n``.
    Severity 0 rows, if asked for, are the clean accuracy."""
    _check_images(images, labels)
    rows = []
    for name in corruptions or list(CORRUPTIONS):
        for s in severities:
            pred = logits_of(model, corrupt(images, info, name, s, seed)).argmax(-1)
            rows.append({"corruption": name, "severity": s, "top1": 100.0 * (pred == labels).float().mean().item(),
                         "n": len(labels)})
    return pd.DataFrame(rows)


def corruption_error(table: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """Hendrycks & Dietterich's corruption error of a model against a reference model: for each corruption,
    the model's errors summed over severities 1-5 divided by the reference's, and their mean (row ``mean``).
    Below 1: more robust than the reference. (ImageNet-C's reference is AlexNet; ours is the baseline.)"""
    rows = []
    for name, own in table[table["severity"] > 0].groupby("corruption", sort=False):
        ref = reference[(reference["corruption"] == name) & (reference["severity"] > 0)]
        if ref.empty:
            raise KeyError(f"The reference has no rows for corruption {name!r}.")
        ref_err = (100.0 - ref["top1"]).sum()
        if ref_err == 0:
            raise ValueError(f"The reference makes no error under {name!r}: the corruption error is undefined.")
        rows.append({"corruption": name, "ce": (100.0 - own["top1"]).sum() / ref_err})
    out = pd.DataFrame(rows)
    return pd.concat([out, pd.DataFrame([{"corruption": "mean", "ce": out["ce"].mean()}])], ignore_index=True)


# --------------------------------------------------------------------------- robustness: adversarial


class _Standardised(nn.Module):
    """The model fed pixels in [0, 1]: attacks step and clip in pixel space."""

    def __init__(self, model: nn.Module, info: DatasetInfo) -> None:
        super().__init__()
        self.model, self.info = model, info

    def forward(self, pixels: Tensor) -> Tensor:
        return self.model(from_pixels(pixels, self.info))


def perturb(
    model: nn.Module, images: Tensor, labels: Tensor, info: DatasetInfo, epsilon: float, attack: str = "fgsm",
    steps: int = 10, seed: int = 0,
) -> Tensor:
    """Adversarial images (standardised) within an L-infinity ball of ``epsilon`` in pixel units.

    ``fgsm``: one step of epsilon along the sign of the loss gradient (Goodfellow et al., 2015). ``pgd``:
    Madry et al.'s projected gradient descent from a random start, ``steps`` steps of 2.5 epsilon / steps.
    Written here: the maintained attack libraries (torchattacks, ART, foolbox) bring their own pinned
    dependencies for what is a few lines of autograd.
    """
    if not math.isfinite(epsilon) or epsilon < 0:
        raise ValueError(f"epsilon is a perturbation size in pixel units, at least 0, not {epsilon}.")
    if attack not in ("fgsm", "pgd"):
        raise ValueError(f"Unknown attack {attack!r}; choose 'fgsm' or 'pgd'.")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, not {steps}.")
    _check_images(images, labels)
    net = _Standardised(model, info).eval()
    clean = to_pixels(images, info).clamp(0, 1)
    if epsilon == 0:
        return images.clone()
    x = clean.clone()
    n_steps, alpha = (1, epsilon) if attack == "fgsm" else (steps, 2.5 * epsilon / steps)
    if attack == "pgd":
        g = torch.Generator().manual_seed(seed)
        x = (x + (torch.rand(x.shape, generator=g) * 2 - 1) * epsilon).clamp(0, 1)
    for _ in range(n_steps):
        x.requires_grad_(True)
        loss = F.cross_entropy(net(x), labels)
        (grad,) = torch.autograd.grad(loss, x)
        with torch.no_grad():
            x = x + alpha * grad.sign()
            x = torch.min(torch.max(x, clean - epsilon), clean + epsilon).clamp(0, 1)
    return from_pixels(x.detach(), info)


def adversarial_accuracy(
    model: nn.Module, images: Tensor, labels: Tensor, info: DatasetInfo, epsilons: Sequence[float],
    attacks: Sequence[str] = ("fgsm", "pgd"), steps: int = 10, batch_size: int = 256,
) -> pd.DataFrame:
    """Top-1 (%) under each attack at each epsilon (pixel units; 0: clean): one row per (attack, epsilon)."""
    _check_images(images, labels)
    rows = []
    for attack in attacks:
        for eps in epsilons:
            correct = 0
            for i in range(0, len(labels), batch_size):
                x, y = images[i:i + batch_size], labels[i:i + batch_size]
                adv = perturb(model, x, y, info, eps, attack, steps)
                correct += (logits_of(model, adv).argmax(-1) == y).sum().item()
            rows.append({"attack": attack, "epsilon": eps, "top1": 100.0 * correct / len(labels), "n": len(labels)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- probabilistic behaviour


def calibration(logits: Tensor, labels: Tensor, bins: int = 15) -> dict[str, float]:
    """Top-1 (%), negative log-likelihood and expected calibration error (torchmetrics, ``bins`` equal-width
    confidence bins, L1: the gap between confidence and accuracy, weighted by the bin's share of images)."""
    from torchmetrics.functional.classification import multiclass_calibration_error

    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"Expected logits (N, classes) and N labels, got {tuple(logits.shape)} and {tuple(labels.shape)}.")
    if bins < 1:
        raise ValueError(f"bins must be at least 1, not {bins}.")
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
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200)

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


# --------------------------------------------------------------------------- fairness


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


# --------------------------------------------------------------------------- privacy


@torch.no_grad()
def losses(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 256) -> Tensor:
    """Per-image cross-entropy."""
    return F.cross_entropy(logits_of(model, images, batch_size), labels, reduction="none")


def membership_auc(
    model: nn.Module, members: tuple[Tensor, Tensor], non_members: tuple[Tensor, Tensor]
) -> float:
    """AUC of the loss-threshold membership-inference attack (Yeom et al., 2018): it guesses "member" when an
    image's loss is low. 0.5: the model's losses do not tell its training images from others; 1: they do
    perfectly. ``members`` are (images, labels) the model was trained on, ``non_members`` held-out ones."""
    from sklearn.metrics import roc_auc_score

    for what, (x, y) in (("members", members), ("non_members", non_members)):
        if len(y) == 0:
            raise ValueError(f"{what} is empty: the attack needs images on both sides.")
        _check_images(x, y)
    scores = torch.cat([-losses(model, *members), -losses(model, *non_members)]).numpy()
    truth = np.r_[np.ones(len(members[1])), np.zeros(len(non_members[1]))]
    return float(roc_auc_score(truth, scores))


# --------------------------------------------------------------------------- transparency


@torch.no_grad()
def attention_rollout(model: nn.Module, images: Tensor) -> Tensor:
    """Relevance of every patch to the class token, (B, patches), by attention rollout (Abnar & Zuidema, 2020):
    each block's head-averaged attention plus the identity (the residual path), rows renormalised, multiplied
    through the blocks. Needs the from-scratch ViT with softmax attention and a class token."""
    from .models import VisionTransformer, require_plain

    if not isinstance(model, VisionTransformer):
        raise TypeError(f"attention_rollout reads vitsurvey's VisionTransformer, not {type(model).__name__}.")
    require_plain(model, "attention rollout")
    maps = model.eval().attention_maps(images)
    eye = torch.eye(maps[0].shape[-1])
    rollout = eye.expand(images.shape[0], -1, -1)
    for attn in maps:
        a = 0.5 * attn.mean(1) + 0.5 * eye
        rollout = (a / a.sum(-1, keepdim=True)) @ rollout
    return rollout[:, 0, model.num_prefix_tokens:]


@torch.no_grad()
def deletion_curve(
    model: nn.Module, images: Tensor, relevance: Tensor, patch_size: int, fractions: Sequence[float] | None = None
) -> pd.DataFrame:
    """Faithfulness of a relevance map (Petsiuk et al.'s deletion metric): patches are blanked (set to the data
    set's mean, 0 after standardisation) from most to least relevant, and the probability of the class the model
    first predicted is tracked. A faithful map makes it fall fast: a small area under the curve. One row per
    fraction of patches deleted, with the mean probability over the images."""
    if images.ndim != 4 or relevance.ndim != 2 or relevance.shape[0] != images.shape[0]:
        raise ValueError(f"Expected images (B, C, H, W) and one relevance per patch (B, patches); got "
                         f"{tuple(images.shape)} and {tuple(relevance.shape)}.")
    side = images.shape[-1] // patch_size
    if side * patch_size != images.shape[-1] or side * side != relevance.shape[1]:
        raise ValueError(f"{relevance.shape[1]} relevances do not tile a {images.shape[-1]}-pixel image in "
                         f"{patch_size}-pixel patches.")
    fractions = list(fractions) if fractions is not None else [i / 10 for i in range(11)]
    if any(not 0.0 <= f <= 1.0 for f in fractions):
        raise ValueError(f"fractions of patches deleted lie in [0, 1], got {fractions}.")
    model.eval()
    target = logits_of(model, images).argmax(-1)
    order = relevance.argsort(-1, descending=True)
    rows = []
    for f in fractions:
        k = round(f * relevance.shape[1])
        keep = torch.ones_like(relevance)
        keep.scatter_(1, order[:, :k], 0.0)
        mask = keep.view(-1, 1, side, side).repeat_interleave(patch_size, 2).repeat_interleave(patch_size, 3)
        prob = logits_of(model, images * mask).softmax(-1).gather(1, target[:, None]).mean().item()
        rows.append({"fraction deleted": f, "probability": prob})
    return pd.DataFrame(rows)


def curve_area(curve: pd.DataFrame) -> float:
    """Area under a deletion curve (trapezoids over the fraction deleted)."""
    x, y = curve["fraction deleted"].to_numpy(float), curve["probability"].to_numpy(float)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


# --------------------------------------------------------------------------- inclusiveness


def who_can_run(model: nn.Module, input_shape: tuple[int, int, int], iters: int = 20) -> dict[str, float]:
    """Our reading of inclusiveness as a cost: what it takes to run the model on the smallest machine, i.e.
    batch-1 latency on one CPU thread (ms), peak inference memory at batch 1 (bytes of live tensors) and
    the size of its saved weights (bytes)."""
    from . import measure

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        latency = measure.latency_ms(model, input_shape, "cpu", iters=iters)
    finally:
        torch.set_num_threads(threads)
    return {"latency_1_thread_ms": latency,
            "memory_bytes": float(measure.inference_memory(model, input_shape, 1, "cpu").peak_bytes or 0),
            "size_bytes": float(measure.serialized_bytes(model))}


# --------------------------------------------------------------------------- the card


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
) -> pd.DataFrame:
    """The 360 card of one model: one row per measured quantity, with its dimension, value, standard error
    (where one is defined) and what a better value is (``higher``/``lower``).

    ``test``: (images, labels) for accuracy, robustness, calibration and fairness. ``members``: training images
    of the model, against which ``test`` serves as the non-members of the membership attack (use as many of
    each). ``held_out``: images to fit the temperature on (default: the first half of ``test``, then every
    calibration number is taken on the second half). Corruptions are averaged at ``severity``; FGSM uses
    ``epsilon`` in pixel units.
    """
    from .metrics import top1_se

    x, y = test
    _check_images(x, y)
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

    logits = logits_of(model, x)
    top1 = 100.0 * (logits.argmax(-1) == y).float().mean().item()
    add("accuracy", "top-1 (%)", top1, top1_se(top1, len(y)), "higher", len(y))
    corrupted = corruption_accuracy(model, x, y, info, severities=(severity,), seed=seed)
    mean_c = float(corrupted["top1"].mean())
    add("robustness", f"top-1 under corruption, severity {severity} (%)", mean_c, top1_se(mean_c, len(y)) / math.sqrt(
        len(corrupted)), "higher", len(y))
    adv = adversarial_accuracy(model, x, y, info, (epsilon,), attacks=("fgsm",))
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
    per_class = per_class_accuracy(y, logits.argmax(-1))
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
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- continual learning


def class_incremental(
    build: Callable[[], nn.Module],
    train_set: tuple[Tensor, Tensor],
    test_set: tuple[Tensor, Tensor],
    profile: object,
    tasks: int = 5,
    replay_per_class: int = 0,
    seed: int = 0,
) -> pd.DataFrame:
    """Class-incremental learning: the classes are split into ``tasks`` consecutive groups, and one model
    (from ``build``) is trained on them one after another with :func:`vitsurvey.train.fit` and the profile's
    settings, with no task identity at test time. ``replay_per_class`` > 0 keeps that many seeded training
    images of every class already seen and mixes them into each later task (a replay buffer); 0 is naive
    fine-tuning. One row per (after task, task seen so far): top-1 (%) on that task's test images over all
    classes, and ``n``."""
    from torch.utils.data import DataLoader, TensorDataset

    from . import train

    (xs, ys), (xt, yt) = train_set, test_set
    _check_images(xs, ys)
    _check_images(xt, yt)
    classes = sorted(int(c) for c in ys.unique())
    if isinstance(tasks, bool) or not isinstance(tasks, int) or not 2 <= tasks <= len(classes):
        raise ValueError(f"tasks must be a whole number from 2 to the number of classes ({len(classes)}), not {tasks!r}.")
    if replay_per_class < 0:
        raise ValueError(f"replay_per_class cannot be negative, got {replay_per_class}.")
    groups = [list(g) for g in np.array_split(classes, tasks)]
    g = torch.Generator().manual_seed(seed)
    model, buffer, rows = build(), torch.zeros(0, dtype=torch.long), []
    for t, group in enumerate(groups):
        idx = torch.nonzero(torch.isin(ys, torch.tensor(group))).flatten()
        if not len(idx):
            raise ValueError(f"No training images of classes {group}.")
        mixed = torch.cat([idx, buffer])
        loader = DataLoader(TensorDataset(xs[mixed], ys[mixed]), batch_size=profile.batch_size,  # type: ignore[attr-defined]
                            shuffle=True, generator=torch.Generator().manual_seed(seed + t),
                            drop_last=len(mixed) >= profile.batch_size)  # type: ignore[attr-defined]
        test_idx = torch.nonzero(torch.isin(yt, torch.tensor(group))).flatten()
        current = DataLoader(TensorDataset(xt[test_idx], yt[test_idx]), batch_size=256)
        train.fit(model, loader, current, profile, log=None)  # type: ignore[arg-type]
        for s, seen in enumerate(groups[: t + 1]):
            sel = torch.isin(yt, torch.tensor(seen))
            pred = logits_of(model, xt[sel]).argmax(-1)
            rows.append({"after task": t + 1, "task": s + 1, "classes": ", ".join(map(str, seen)),
                         "top1": 100.0 * (pred == yt[sel]).float().mean().item(), "n": int(sel.sum())})
        if replay_per_class:
            keep = [idx_c[torch.randperm(len(idx_c), generator=g)[:replay_per_class]]
                    for c in group for idx_c in [torch.nonzero(ys == c).flatten()]]
            buffer = torch.cat([buffer, *keep])
    return pd.DataFrame(rows)


def continual_summary(table: pd.DataFrame) -> dict[str, float]:
    """Average accuracy over all tasks after the last one, and forgetting: for each task but the last, its
    best accuracy before the end minus its accuracy at the end, averaged (Chaudhry et al., 2018)."""
    last = int(table["after task"].max())
    final = table[table["after task"] == last].set_index("task")["top1"]
    earlier = table[table["after task"] < last]
    forgetting = [earlier[earlier["task"] == t]["top1"].max() - final[t] for t in final.index if t < last]
    return {"average accuracy": float(final.mean()), "forgetting": float(np.mean(forgetting)) if forgetting else 0.0}
