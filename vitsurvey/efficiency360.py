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
* privacy: the AUC of a loss-threshold membership-inference attack (Yeom et al., 2018), and the accuracy
  that differentially private training (opacus) costs at a few privacy budgets;
* transparency: attention rollout maps (Abnar & Zuidema, 2020) and their faithfulness, by a deletion curve;
* inclusiveness: what it takes to run the model on the smallest machine (one CPU thread, batch 1), and
  accuracy on classes that were rare in the training data;
* continual learning: class-incremental training over task splits, with average accuracy and forgetting, for
  naive fine-tuning and a replay buffer;
* approximation: how closely a compressed model reproduces the model it was made from;
* computational complexity: multiply-accumulates per image (derived in notebook 01, counted by
  :func:`vitsurvey.measure.count_macs`);
* spectral complexity: Bartlett et al.'s spectral capacity measure of the weight matrices.

:func:`card` gathers the per-model ones for one model and :func:`relative_to` sets several cards against a
reference; the ones that train (privacy by DP, inclusiveness by imbalance, continual learning) are separate.

Every function takes standardised images (as :func:`vitsurvey.data.load` returns them) and returns a tidy
table or a number. Perturbations are applied in pixel space, [0, 1] per channel, and standardised again, so
an epsilon or a noise level means the same thing on every data set. What trains goes through
:func:`vitsurvey.train.fit`.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from .data import DatasetInfo, from_pixels, to_pixels
from .profiles import Profile

SEVERITIES = (1, 2, 3, 4, 5)
"""Corruption severities, as in ImageNet-C; severity 0 is the clean image."""


def _check_images(images: Tensor, labels: Tensor) -> None:
    if images.ndim != 4:
        raise ValueError(f"Expected images of shape (N, C, H, W), got {tuple(images.shape)}.")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"Expected one label per image: {images.shape[0]} images, labels of shape {tuple(labels.shape)}.")
    if images.shape[0] == 0:
        raise ValueError("No images given: pass at least one image and its label.")


def device_of(model: nn.Module) -> torch.device:
    """Where the model's weights are (the CPU for a model without any): inputs go there, results come back."""
    tensor = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


@torch.no_grad()
def logits_of(model: nn.Module, images: Tensor, batch_size: int = 256) -> Tensor:
    """The model's logits for every image, in eval mode, in batches, on the model's device; returned on the CPU."""
    model.eval()
    dev = device_of(model)
    return torch.cat([model(images[i:i + batch_size].to(dev)).float().cpu() for i in range(0, len(images), batch_size)])


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
        return self.model(from_pixels(pixels, self.info).to(device_of(self.model))).float().cpu()


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
    if any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in model.modules()):
        raise ValueError(f"{type(model).__name__} runs int8 kernels, which have no gradients to attack with; craft "
                         "the perturbation on its float source instead (adversarial_accuracy(..., source=float_model)).")
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
    source: nn.Module | None = None,
) -> pd.DataFrame:
    """Top-1 (%) under each attack at each epsilon (pixel units; 0: clean): one row per (attack, epsilon).
    ``source`` crafts the perturbations (default: ``model`` itself, a white-box attack); a model without
    gradients, such as torch.ao's int8 one, is attacked through its float source instead (a transfer attack)."""
    _check_images(images, labels)
    source = source if source is not None else model
    rows = []
    for attack in attacks:
        for eps in epsilons:
            correct = 0
            for i in range(0, len(labels), batch_size):
                x, y = images[i:i + batch_size], labels[i:i + batch_size]
                adv = perturb(source, x, y, info, eps, attack, steps)
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


def _loader(images: Tensor, labels: Tensor, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    return DataLoader(TensorDataset(images, labels), batch_size=batch_size, shuffle=shuffle,
                      generator=torch.Generator().manual_seed(seed) if shuffle else None,
                      drop_last=shuffle and len(labels) >= batch_size)


_OPACUS_NOTICES = (
    "Secure RNG turned off",  # a seeded generator is the point here: reruns must agree
    "Optimal order is the largest alpha",  # at a large epsilon the bound is valid, only not the tightest
    "Full backward hook is firing",  # the first layer's input needs no gradient; its weights get theirs
    "There is a performance drop",  # torch.func looping where a kernel has no batching rule (small layers)
)
"""Warnings opacus gives on every private training here, each expected for the reason beside it."""


def private_training(
    build: Callable[[], nn.Module],
    train_set: tuple[Tensor, Tensor],
    test_set: tuple[Tensor, Tensor],
    profile: Profile,
    epsilons: Sequence[float],
    delta: float | None = None,
    max_grad_norm: float = 1.0,
) -> pd.DataFrame:
    """What differential privacy costs in accuracy: one model (from ``build``, seeded alike) trained with
    :func:`vitsurvey.train.fit` and the profile's settings per privacy budget ``epsilon`` (``math.inf``: the
    usual, non-private training, the control), on ``train_set``, tested on ``test_set``.

    Private training is DP-SGD's recipe (Abadi et al., 2016) with AdamW as the optimiser: every image's
    gradient clipped to ``max_grad_norm``, Gaussian noise added to their sum, batches drawn by Poisson
    sampling; opacus does all three through fit's ``prepare`` hook and picks the noise for (epsilon, delta)
    over the profile's epochs with its RDP accountant. ``delta`` defaults to a tenth of 1 / (training
    images). One row per budget: top-1 (%), ``n``, the epsilon the accountant says was spent, the noise
    multiplier, the membership-inference AUC (:func:`membership_auc`; as many training images as test
    images) and the training seconds.
    """
    from opacus import PrivacyEngine
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from . import train

    (xs, ys), (xt, yt) = train_set, test_set
    _check_images(xs, ys)
    _check_images(xt, yt)
    if not epsilons:
        raise ValueError("Give at least one privacy budget epsilon (math.inf for non-private training).")
    for eps in epsilons:
        if not eps > 0:  # also catches NaN
            raise ValueError(f"A privacy budget epsilon is positive (math.inf: not private), not {eps}.")
    delta = 0.1 / len(ys) if delta is None else delta
    if not 0 < delta < 1:
        raise ValueError(f"delta is a probability in (0, 1), typically below 1 / (training images); got {delta}.")
    if not max_grad_norm > 0:
        raise ValueError(f"max_grad_norm must be positive, not {max_grad_norm}.")
    test_loader = _loader(xt, yt, 256, False, 0)
    rows = []
    for eps in epsilons:
        train.seed_everything(profile.seed)
        model = build()
        wrapped: list[nn.Module] = []
        with warnings.catch_warnings(), contextlib.ExitStack() as stack:
            for said in _OPACUS_NOTICES:
                warnings.filterwarnings("ignore", message=said)
            engine = PrivacyEngine(accountant="rdp")

            def prepare(m: nn.Module, opt: torch.optim.Optimizer, loader: DataLoader,
                        eps: float = eps) -> tuple[nn.Module, torch.optim.Optimizer, DataLoader]:
                m.train()  # opacus checks the mode it will train in
                out = engine.make_private_with_epsilon(
                    module=m, optimizer=opt, data_loader=loader, target_epsilon=eps, target_delta=delta,
                    epochs=profile.epochs, max_grad_norm=max_grad_norm,
                    noise_generator=torch.Generator().manual_seed(profile.seed))
                wrapped.append(out[0])
                return out

            if math.isfinite(eps):
                # per-image gradients vectorise (torch.func) through the composite attention, not the fused kernel
                stack.enter_context(sdpa_kernel(SDPBackend.MATH))
            # one loader for every budget and the control; a private run samples its batches from it by
            # Poisson sampling, which has no drop_last
            loader = DataLoader(TensorDataset(xs, ys), batch_size=profile.batch_size, shuffle=True,
                                generator=torch.Generator().manual_seed(profile.seed))
            result = train.fit(model, loader, test_loader, profile, log=None,
                               prepare=prepare if math.isfinite(eps) else None)
        spent, sigma = math.inf, 0.0
        if wrapped:
            spent, sigma = engine.accountant.get_epsilon(delta), float(engine.accountant.history[-1][0])
            wrapped[0].remove_hooks()  # leave ``model`` as it was built, without opacus's per-image hooks
        m = min(len(ys), len(yt))
        auc = membership_auc(model, (xs[:m], ys[:m]), (xt[:m], yt[:m]))
        rows.append({"epsilon": eps, "top1": result.top1, "n": len(yt), "epsilon spent": spent, "delta": delta,
                     "noise multiplier": sigma, "membership AUC": auc, "train_seconds": result.train_seconds})
    return pd.DataFrame(rows)


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
    maps = [m.float().cpu() for m in model.eval().attention_maps(images.to(device_of(model)))]
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


def rollout_agreement(model: nn.Module, reference: nn.Module, images: Tensor) -> dict[str, float]:
    """Do two ViTs look at the same places? The Pearson correlation of their attention rollouts
    (:func:`attention_rollout`) over the patches of each image: the mean over the images and its standard
    error. Both models must cut the images into the same patches."""
    ours, theirs = attention_rollout(model, images), attention_rollout(reference, images)
    if ours.shape != theirs.shape:
        raise ValueError(f"The two models' rollouts cover different patches ({ours.shape[1]} and {theirs.shape[1]});"
                         " compare models with the same patch grid.")
    a, b = ours - ours.mean(1, keepdim=True), theirs - theirs.mean(1, keepdim=True)
    r = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)
    se = float(r.std(unbiased=True) / math.sqrt(len(r))) if len(r) > 1 else math.nan
    return {"correlation": float(r.mean()), "se": se}


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


def imbalanced_indices(labels: Tensor, rare: Sequence[int], keep: float, seed: int = 0) -> Tensor:
    """Indices of a training subset in which each class in ``rare`` keeps only a seeded fraction ``keep`` of
    its images and every other class keeps all of its own."""
    present = set(int(c) for c in labels.unique())
    missing = [c for c in rare if int(c) not in present]
    if missing or not rare:
        raise ValueError(f"rare must name classes present in the labels ({sorted(present)}); got {list(rare)}.")
    if not 0 < keep <= 1:
        raise ValueError(f"keep is the fraction of a rare class's images kept, in (0, 1], not {keep}.")
    scarce = {int(r) for r in rare}
    g = torch.Generator().manual_seed(seed)
    parts = []
    for c in sorted(present):
        idx = torch.nonzero(labels == c).flatten()
        if c in scarce:
            idx = idx[torch.randperm(len(idx), generator=g)[: max(1, round(keep * len(idx)))]]
        parts.append(idx)
    return torch.cat(parts).sort().values


def imbalanced_training(
    build: Callable[[], nn.Module],
    train_set: tuple[Tensor, Tensor],
    test_set: tuple[Tensor, Tensor],
    profile: Profile,
    rare: Sequence[int],
    keep: float,
    seed: int = 0,
) -> pd.DataFrame:
    """Our reading of inclusiveness as accuracy: how well a model serves classes that are under-represented
    in its training data. One model trained (:func:`vitsurvey.train.fit`, the profile's settings) on an
    imbalanced subset (:func:`imbalanced_indices`) and one, the control, on a class-balanced random subset
    of the same size; one row per (training set, class) with top-1 (%), ``n`` and whether the class was rare."""
    from . import train

    (xs, ys), (xt, yt) = train_set, test_set
    _check_images(xs, ys)
    _check_images(xt, yt)
    skewed = imbalanced_indices(ys, rare, keep, seed)
    g = torch.Generator().manual_seed(seed)
    balanced = torch.randperm(len(ys), generator=g)[: len(skewed)].sort().values
    test_loader = _loader(xt, yt, 256, False, 0)
    frames = []
    for name, idx in (("imbalanced", skewed), ("balanced (control)", balanced)):
        train.seed_everything(profile.seed)
        model = build()
        train.fit(model, _loader(xs[idx], ys[idx], profile.batch_size, True, seed), test_loader, profile, log=None)
        table = per_class_accuracy(yt, logits_of(model, xt).argmax(-1))
        table.insert(0, "trained on", name)
        table["rare"] = table["class"].astype(int).isin([int(r) for r in rare])
        table["train images"] = [int((ys[idx] == int(c)).sum()) for c in table["class"]]
        frames.append(table)
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------- approximation, spectral complexity


def agreement(model: nn.Module, reference: nn.Module, images: Tensor) -> dict[str, float]:
    """Our reading of approximation: how closely a compressed model reproduces the function of the model it
    was made from, on ``images``: the share of images on which their top-1 classes agree (%), and the mean
    KL divergence of its predicted distribution from the reference's (nats; 0 for the same function)."""
    if images.ndim != 4 or not len(images):
        raise ValueError(f"Expected a non-empty batch of images (N, C, H, W), got {tuple(images.shape)}.")
    ours, theirs = logits_of(model, images).float(), logits_of(reference, images).float()
    kl = F.kl_div(ours.log_softmax(-1), theirs.log_softmax(-1), log_target=True, reduction="batchmean")
    return {"agreement": 100.0 * (ours.argmax(-1) == theirs.argmax(-1)).float().mean().item(), "kl": float(kl)}


def _weight_matrices(model: nn.Module) -> list[Tensor]:
    mats = []
    for m in model.modules():
        w = getattr(m, "weight", None)
        if callable(w):  # torch.ao's quantized layers keep packed weights behind a method
            w = w()
        if isinstance(w, Tensor) and w.ndim >= 2:
            w = w.dequantize() if w.is_quantized else w
            mats.append(w.detach().float().flatten(1))
    return mats


def spectral_complexity(model: nn.Module) -> dict[str, float]:
    """Our reading of spectral complexity: Bartlett, Foster & Telgarsky's (2017) capacity measure of a network,
    ``(prod_i ||W_i||_2) * (sum_i (||W_i^T||_{2,1} / ||W_i||_2)^(2/3))^(3/2)``, over every weight matrix (a
    convolution's as out-channels x the rest; reference matrices 0, Lipschitz constants of the activations 1).
    The bound it comes from covers feed-forward networks; attention's products of activations are outside it,
    so for a ViT this is a size of its linear maps, not a bound. Returned as log10 values (they overflow
    otherwise): of the whole measure, of the product of spectral norms, and the number of matrices."""
    mats = _weight_matrices(model)
    if not mats:
        raise ValueError(f"{type(model).__name__} has no weight matrices to measure.")
    spectral = torch.stack([torch.linalg.matrix_norm(w, ord=2) for w in mats])
    rows_l2 = torch.stack([w.norm(dim=1).sum() for w in mats])
    log_product = float(spectral.log10().sum())
    ratio_sum = float(((rows_l2 / spectral) ** (2 / 3)).sum())
    return {"log10 spectral complexity": log_product + 1.5 * math.log10(ratio_sum),
            "log10 product of spectral norms": log_product, "matrices": float(len(mats))}


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
    rollout, and against a ``reference`` ViT with the same patches, how well their rollouts correlate) use
    the first ``explain`` test images (0: leave them out).
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
    if reference is not None:
        close = agreement(model, reference, x)
        add("approximation", "top-1 agreement with the reference (%)", close["agreement"],
            top1_se(close["agreement"], len(y)), "higher", len(y))
        add("approximation", "KL divergence from the reference (nats)", close["kl"], None, "lower", len(y))
    if explain > 0 and explainable(model):
        ex = x[:explain]
        area = curve_area(deletion_curve(model, ex, attention_rollout(model, ex), model.cfg.patch_size))
        add("transparency", "deletion area of attention rollout", area, None, "lower", len(ex))
        if reference is not None and explainable(reference) and reference.cfg.grid == model.cfg.grid:
            agree = rollout_agreement(model, reference, ex)
            add("transparency", "rollout correlation with the reference", agree["correlation"], agree["se"], "higher",
                len(ex))
    if macs is not None:
        add("computational complexity", "MACs per image", float(macs), None, "lower", 1)
    add("spectral complexity", "log10 spectral complexity", spectral_complexity(model)["log10 spectral complexity"],
        None, "lower", 1)
    return pd.DataFrame(rows)


def explainable(model: nn.Module) -> bool:
    """Whether attention rollout applies: vitsurvey's ViT with softmax attention and a class token."""
    from .models import VisionTransformer

    return isinstance(model, VisionTransformer) and model.cfg.class_token and model.cfg.mixer == "attention"


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


# --------------------------------------------------------------------------- continual learning


def class_incremental(
    build: Callable[[], nn.Module],
    train_set: tuple[Tensor, Tensor],
    test_set: tuple[Tensor, Tensor],
    profile: Profile,
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
        test_idx = torch.nonzero(torch.isin(yt, torch.tensor(group))).flatten()
        train.fit(model, _loader(xs[mixed], ys[mixed], profile.batch_size, True, seed + t),
                  _loader(xt[test_idx], yt[test_idx], 256, False, 0), profile, log=None)
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
