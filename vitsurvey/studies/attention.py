"""How well cheaper token mixers can stand in for a trained softmax attention (S1's approximation and
spectral complexity, notebook 04).

Two yardsticks, measured on the attention matrices a trained model forms:

* rank -- :func:`best_low_rank` is the best rank-k approximation of each matrix (no mixer of rank k,
  Linformer's included, can do better), :func:`singular_values` its spectrum, and :func:`truncate_attention`
  a model whose every attention is cut to rank k, to see how much accuracy survives without retraining;
* translation invariance -- :func:`circulant_share` is the fraction of the patch-to-patch attention that a
  global filter (GFNet's Fourier mixer) could express, :func:`circulant_projection` the filter itself.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ..device import threads
from ..models import Attention, require_plain

__all__ = [
    "RankTruncatedAttention", "best_low_rank", "circulant_projection", "circulant_share", "singular_values",
    "truncate_attention",
]


def best_low_rank(attn: Tensor, rank: int) -> Tensor:
    """The best rank-``rank`` approximation (Frobenius norm, Eckart-Young) of each N x N attention matrix in
    ``attn`` (..., N, N), by truncated SVD. No mixer of rank ``rank`` (Linformer's included) can do better
    on these matrices; it is the yardstick, not a method (an SVD costs far more than attention)."""
    if rank < 1:
        raise ValueError(f"rank must be at least 1, not {rank}.")
    with threads(1):  # batched SVDs of small matrices gain nothing from threads (see device.threads)
        u, s, vh = torch.linalg.svd(attn.double(), full_matrices=False)
    k = min(rank, s.shape[-1])
    return ((u[..., :k] * s[..., None, :k]) @ vh[..., :k, :]).to(attn.dtype)


def singular_values(attn: Tensor) -> Tensor:
    """Singular values of each N x N matrix in ``attn`` (..., N, N), largest first, in float64."""
    with threads(1):
        return torch.linalg.svdvals(attn.double())


class RankTruncatedAttention(Attention):
    """A trained softmax attention whose probability matrix is replaced by its best rank-``rank``
    approximation (:func:`best_low_rank`) before it weighs the values: how much accuracy a model keeps
    when its attention is forced to low rank, with no retraining. Shares the weights it wraps."""

    def __init__(self, attention: Attention, rank: int) -> None:
        nn.Module.__init__(self)
        if not isinstance(attention, Attention):
            raise ValueError(f"RankTruncatedAttention wraps a softmax Attention, not {type(attention).__name__}.")
        self.num_heads, self.head_dim, self.scale = attention.num_heads, attention.head_dim, attention.scale
        self.qkv, self.proj, self.rank = attention.qkv, attention.proj, rank

    def probabilities(self, q: Tensor, k: Tensor) -> Tensor:
        return best_low_rank(super().probabilities(q, k), self.rank)

    def forward(self, x: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        out, attn = super().forward(x, need_weights=True)  # the explicit path, through probabilities()
        return out, attn if need_weights else None


def truncate_attention(model: nn.Module, rank: int) -> nn.Module:
    """A copy of ``model`` (ours, softmax attention) whose every attention matrix is cut to rank ``rank``."""
    require_plain(model, "truncate_attention")
    out = copy.deepcopy(model)
    for block in out.blocks:
        block.attn = RankTruncatedAttention(block.attn, rank)
    return out


def _circulant_kernel(p: Tensor, grid: int) -> Tensor:
    """Orthogonal projection of (..., grid^2, grid^2) matrices onto 2-D circulant ones, as kernels c[a, b]."""
    q = p.reshape(*p.shape[:-2], grid, grid, grid, grid)  # [i, j, i', j']
    r = torch.arange(grid)
    i, j = r[:, None, None, None], r[None, :, None, None]
    a, b = r[None, None, :, None], r[None, None, None, :]
    return q[..., i, j, (i + a) % grid, (j + b) % grid].mean((-4, -3))  # [i, j, a, b] averaged over (i, j)


def _patch_block(attn: Tensor, grid: int, prefix: int) -> Tensor:
    p = attn[..., prefix:, prefix:]
    if p.shape[-1] != grid * grid or p.shape[-2] != grid * grid:
        raise ValueError(f"{p.shape[-1]} patch tokens after {prefix} prefix tokens is not a {grid} x {grid} grid.")
    return p


def circulant_projection(attn: Tensor, grid: int, prefix: int = 1) -> Tensor:
    """For each attention matrix (..., N, N), its patch-to-patch part (the ``prefix`` tokens dropped)
    projected orthogonally onto the 2-D circulant matrices of a ``grid`` x ``grid`` torus: the weight of
    patch (i + a, j + b) in the output of patch (i, j) replaced by its average over all (i, j). Those are
    the matrices a global filter (GFNet's Fourier mixer) applies: translation-invariant, the same at
    every position. Returns the (..., grid, grid) kernel c[a, b]."""
    return _circulant_kernel(_patch_block(attn, grid, prefix), grid)


def circulant_share(attn: Tensor, grid: int, prefix: int = 1, shared: bool = False) -> Tensor:
    """Fraction of the patch-to-patch attention's energy (squared Frobenius norm) that circulant mixing
    keeps, after removing each matrix's mean (a uniform matrix is circulant, and would otherwise count
    as structure explained). 1 for purely translation-invariant mixing.

    ``attn`` is (B, ..., N, N). Per matrix by default, (B, ...); with ``shared``, one kernel for all B
    matrices (the batch mean of their kernels, the projection onto input-independent mixing, which is
    what GFNet's learned filter is), returning (...)."""
    p = _patch_block(attn, grid, prefix)
    p = p - p.mean((-2, -1), keepdim=True)
    kernel = _circulant_kernel(p, grid)
    total = p.square().sum((-2, -1))
    if shared:
        return grid * grid * p.shape[0] * kernel.mean(0).square().sum((-2, -1)) / total.sum(0)
    return grid * grid * kernel.square().sum((-2, -1)) / total
