"""Transparency, as we read S1's dimension: attention rollout maps (Abnar & Zuidema, 2020), their faithfulness
by a deletion curve (Petsiuk et al.), and whether two ViTs attend to the same patches.

Rollout reads softmax attention through a class token, so it applies to vitsurvey's ViT in that form only
(:func:`explainable`); for any other model these rows of the card are left out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from ...device import device_of
from ...models import VisionTransformer, require_plain
from .evaluation import logits_of

__all__ = ["attention_rollout", "curve_area", "deletion_curve", "deletion_versus_random", "explainable",
           "rollout_agreement"]


def explainable(model: nn.Module) -> bool:
    """Whether attention rollout applies: vitsurvey's ViT with softmax attention and a class token."""
    return isinstance(model, VisionTransformer) and model.cfg.class_token and model.cfg.mixer == "attention"


@torch.no_grad()
def attention_rollout(model: nn.Module, images: Tensor) -> Tensor:
    """Relevance of every patch to the class token, (B, patches), by attention rollout (Abnar & Zuidema, 2020):
    each block's head-averaged attention plus the identity (the residual path), rows renormalised, multiplied
    through the blocks. Needs the from-scratch ViT with softmax attention and a class token."""
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


def deletion_versus_random(model: nn.Module, images: Tensor, seed: int = 0) -> dict[str, object]:
    """The deletion area of the model's attention rollout against its own random-order reference: the same model,
    the same images, patches deleted in a seeded random order per image. A raw area depends on how fast the
    model's confidence falls under any deletion (a model that relies on few patches falls fast whatever the
    order), so only the ratio ``rollout / random`` compares models: below 1, the map ranks the patches the model
    needs first; 1, no better than chance. Returns both areas, their ratio and both curves."""
    if not explainable(model):
        raise TypeError(f"{type(model).__name__} has no attention rollout (see explainable()).")
    g = torch.Generator().manual_seed(seed)
    patch = model.cfg.patch_size
    ranked = deletion_curve(model, images, attention_rollout(model, images), patch)
    shuffled = deletion_curve(model, images, torch.rand(len(images), model.cfg.grid**2, generator=g), patch)
    a, b = curve_area(ranked), curve_area(shuffled)
    return {"rollout area": a, "random area": b, "ratio": a / b if b > 0 else math.nan, "rollout curve": ranked,
            "random curve": shuffled}


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
