"""Approximation, as we read S1's dimension: how closely a compressed model reproduces the function of the
model it was made from (top-1 agreement and the KL divergence of their predictions)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .evaluation import logits_of

__all__ = ["agreement"]


def agreement(model: nn.Module, reference: nn.Module, images: Tensor) -> dict[str, float]:
    """Our reading of approximation: how closely a compressed model reproduces the function of the model it
    was made from, on ``images``: the share of images on which their top-1 classes agree (%), and the mean
    KL divergence of its predicted distribution from the reference's (nats; 0 for the same function)."""
    if images.ndim != 4 or not len(images):
        raise ValueError(f"Expected a non-empty batch of images (N, C, H, W), got {tuple(images.shape)}.")
    ours, theirs = logits_of(model, images).float(), logits_of(reference, images).float()
    kl = F.kl_div(ours.log_softmax(-1), theirs.log_softmax(-1), log_target=True, reduction="batchmean")
    return {"agreement": 100.0 * (ours.argmax(-1) == theirs.argmax(-1)).float().mean().item(), "kl": float(kl)}
