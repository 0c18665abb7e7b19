"""Robustness, S1's first dimension as we read it: accuracy under common corruptions at five severities, the
corruption error relative to a reference model (Hendrycks & Dietterich's mCE, with our baseline in place of
AlexNet), and accuracy under FGSM and PGD perturbations over an epsilon sweep.

Perturbations are applied in pixel space, [0, 1] per channel, and standardised again, so an epsilon or a
noise level means the same thing on every data set.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ... import checks
from ...data import from_pixels, to_pixels
from ...device import device_of
from .evaluation import check_images, logits_of, top1_of

if TYPE_CHECKING:
    from ...data import DatasetInfo

__all__ = [
    "CORRUPTIONS", "SEVERITIES", "adversarial_accuracy", "corrupt", "corrupted_correctness", "corruption_accuracy",
    "corruption_error", "perturb", "relative_corruption_error",
]

SEVERITIES = (1, 2, 3, 4, 5)
"""Corruption severities, as in ImageNet-C; severity 0 is the clean image."""


# --------------------------------------------------------------------------- corruptions


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
    checks.whole("severity", severity, 0, 5, hint="Severity 0 is the clean image.")
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
    check_images(images, labels)
    rows = []
    for name in corruptions or list(CORRUPTIONS):
        for s in severities:
            top1 = top1_of(model, corrupt(images, info, name, s, seed), labels)
            rows.append({"corruption": name, "severity": s, "top1": top1, "n": len(labels)})
    return pd.DataFrame(rows)


@torch.no_grad()
def corrupted_correctness(
    model: nn.Module, images: Tensor, labels: Tensor, info: DatasetInfo, severity: int,
    corruptions: Sequence[str] | None = None, seed: int = 0,
) -> Tensor:
    """Whether the model is right on every image under every corruption at ``severity``: a (corruptions, N)
    boolean tensor. Every corruption is applied to the same images, so the rows are paired: the standard error of
    the mean over corruptions is that of each image's mean over the rows (see :func:`vitsurvey.efficiency360.card`),
    not a binomial one divided by the square root of the number of corruptions, which treats them as independent."""
    check_images(images, labels)
    names = list(corruptions or CORRUPTIONS)
    return torch.stack([logits_of(model, corrupt(images, info, name, severity, seed)).argmax(-1) == labels
                        for name in names])


def _degradation(table: pd.DataFrame, name: str, who: str) -> float:
    """``sum_s (E_s - E_clean)`` of one corruption over the severities above 0 of a :func:`corruption_accuracy`
    table (errors in %), the clean error read from its severity 0 rows."""
    corrupted = table[(table["corruption"] == name) & (table["severity"] > 0)]
    if corrupted.empty:
        raise KeyError(f"{who} has no rows for corruption {name!r} at severities 1-5.")
    clean_error = 100.0 - float(table[table["severity"] == 0]["top1"].iloc[0])
    return float((100.0 - corrupted["top1"] - clean_error).sum())


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


def relative_corruption_error(table: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """Hendrycks & Dietterich's relative corruption error: for each corruption c, how much accuracy the model
    loses to it against how much the reference loses, ``sum_s (E_s,c - E_clean) / sum_s (E^ref_s,c - E^ref_clean)``
    over severities 1-5, and their mean (row ``mean``: the relative mCE). Unlike :func:`corruption_error` it does not
    reward a model for being more accurate on clean images: 1 means it degrades as much as the reference.

    Both tables need severity 0 rows (the clean accuracy; ``corruption_accuracy(..., severities=(0, 1, 2, 3, 4,
    5))``). Where the reference loses nothing to a corruption (its summed degradation is 0 or below) the ratio is
    undefined: that row is NaN and the mean is over the others (column ``defined``)."""
    for who, t in (("The model's table", table), ("The reference's table", reference)):
        if not (t["severity"] == 0).any():
            raise ValueError(f"{who} has no severity 0 rows: the relative corruption error subtracts the clean "
                             "error; measure with severities=(0, *SEVERITIES).")
    rows = []
    for name in dict.fromkeys(table.loc[table["severity"] > 0, "corruption"]):
        own_deg, ref_deg = _degradation(table, name, "The model's table"), _degradation(reference, name, "The reference")
        defined = ref_deg > 0
        rows.append({"corruption": name, "relative ce": own_deg / ref_deg if defined else math.nan,
                     "defined": defined})
    out = pd.DataFrame(rows)
    mean = {"corruption": "mean", "relative ce": out["relative ce"].mean(), "defined": bool(out["defined"].any())}
    return pd.concat([out, pd.DataFrame([mean])], ignore_index=True)


# --------------------------------------------------------------------------- adversarial perturbations


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
    checks.whole("steps", steps, 1)
    check_images(images, labels)
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
    check_images(images, labels)
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
