"""Spectral complexity, as we read S1's dimension: Bartlett et al.'s spectral capacity measure of a model's
weight matrices. (Computational complexity, MACs per image, is counted by :func:`vitsurvey.measure.count_macs`
and passed to the card by its caller.)"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["spectral_complexity"]


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
