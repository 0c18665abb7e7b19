"""Weight pruning: unstructured (zero single weights) and structured (remove heads and MLP neurons).

Unstructured magnitude pruning zeroes the smallest weights. The matrices keep their shape, so dense
kernels do exactly the same work: fewer non-zeros, same time (notebook 05 measures it).
:func:`nonzero_params` (at home in :mod:`vitsurvey.models.counts`) counts what a sparse format would keep.

Structured pruning removes whole attention heads and MLP neurons and rebuilds the layers smaller, so
every matrix product shrinks and time falls with it. Importance, for a block with QKV weight
``W_qkv`` (rows: queries, keys, values of every head), output projection ``W_o``, and MLP ``W_1``,
``W_2``:

* head h:   ||W_q,h||^2 + ||W_k,h||^2 + ||W_v,h||^2 + ||W_o[:, h]||^2 (the head's weights, squared);
* neuron j: ||W_1[j, :]|| * ||W_2[:, j]|| (a bound on how much one unit of its activation moves the
  output).

The lowest-ranked ``ratio`` of heads and of neurons is removed in every block (or in chosen blocks).

:func:`prune_head_dims` keeps every head and narrows each instead, as Torch-Pruning's ViT example does by default
(``prune_head_dims``): the ``ratio`` of each head's query/key channels and of its value channels with the lowest
scores go, with the MLP's neurons as above. Its scores are ours, by the neuron's reasoning: a query/key channel j
adds q_j k_j to every attention logit, bounded by ||W_q,j|| ||W_k,j||; a value channel j reaches the output through
W_o[:, j], bounded by ||W_v,j|| ||W_o[:, j]||. With whole heads in steps of 1/h and channels in steps of 1/d, a
ratio moves the structure long before it removes another head.
:func:`mask_structured` zeroes the same heads and neurons without removing them: the two models
compute the same function, which the tests check.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from ..models import Attention, Mlp, VisionTransformer, require_plain
from ..models.counts import nonzero_params

__all__ = [
    "head_importance", "magnitude_prune", "make_permanent", "mask_structured", "neuron_importance", "nonzero_params",
    "head_dim_importance", "prune_head_dims", "prune_structured", "removed_fraction", "require_float",
    "select_structures", "sparsity_of",
]


def _block_linears(model: VisionTransformer) -> list[nn.Linear]:
    return [m for b in model.blocks for m in (b.attn.qkv, b.attn.proj, b.mlp.fc1, b.mlp.fc2)]


def require_float(model: nn.Module, what: str) -> None:
    """Refuse, before any work, a model that pruning cannot change: not vitsurvey's ViT (a timm model, or one
    wrapped by ToMe, EViT or QuantViT), without attention blocks, or quantized (int8 layers hold packed weights, not
    a weight matrix to prune). The message names the models that are supported."""
    if not isinstance(model, VisionTransformer):
        raise TypeError(f"{what} works on vitsurvey's float VisionTransformer, not on a {type(model).__module__}.{type(model).__name__}: prune "
                        "the plain model, then wrap it (ToMe, EViT, QuantViT) or quantize it.")
    if model.cfg.mixer != "attention":
        raise ValueError(f"{what} needs softmax attention in every block; this model has mixer {model.cfg.mixer!r}.")
    odd = sorted({f"{type(m).__module__}.{type(m).__name__}" for m in _block_linears(model)
                  if type(m) is not nn.Linear})
    if odd:
        raise TypeError(f"{what} works on float nn.Linear layers; this model's blocks hold {', '.join(odd)} (a "
                        "quantized model): prune the float model first, then quantize it.")


def _check_fraction(value: float, name: str, meaning: str = "the fraction removed") -> None:
    if not 0 <= value < 1:
        raise ValueError(f"{name} must be in [0, 1): {meaning}; got {value}.")


# --------------------------------------------------------------------------- unstructured


def magnitude_prune(model: VisionTransformer, sparsity: float, scope: str = "global") -> VisionTransformer:
    """Zero the ``sparsity`` fraction of block weights with the smallest magnitude, in place.

    ``scope="global"`` ranks all block weights together (layers end up with different sparsities);
    ``"layer"`` prunes every weight matrix to the same sparsity. torch's pruning masks stay attached,
    so fine-tuning keeps the pruned weights at zero; :func:`make_permanent` removes the masks.
    """
    require_float(model, "Magnitude pruning")
    _check_fraction(sparsity, "sparsity")
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', not {scope!r}.")
    params = [(m, "weight") for m in _block_linears(model)]
    if sparsity == 0:
        return model
    if scope == "global":
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=sparsity)
    else:
        for module, name in params:
            prune.l1_unstructured(module, name, amount=sparsity)
    return model


def make_permanent(model: VisionTransformer) -> VisionTransformer:
    """Fold torch's pruning masks into the weights (zeros stay zeros, no mask is applied any more)."""
    for module in _block_linears(model):
        if prune.is_pruned(module):
            prune.remove(module, "weight")
    return model


def sparsity_of(model: VisionTransformer) -> float:
    """Fraction of exactly-zero weights in the blocks' linear layers."""
    require_float(model, "sparsity_of")
    weights = [m.weight for m in _block_linears(model)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / sum(w.numel() for w in weights)


# --------------------------------------------------------------------------- structured


def head_importance(attn: Attention) -> Tensor:
    """Importance of each head of one attention layer (see the module docstring)."""
    h, d = attn.num_heads, attn.head_dim
    w = attn.qkv.weight.detach().view(3, h, d, -1)  # (q/k/v, head, d, dim)
    proj = attn.proj.weight.detach().view(-1, h, d)  # (dim, head, d)
    return w.pow(2).sum(dim=(0, 2, 3)) + proj.pow(2).sum(dim=(0, 2))


def neuron_importance(mlp: Mlp) -> Tensor:
    """Importance of each hidden neuron of one MLP (see the module docstring)."""
    return mlp.fc1.weight.detach().norm(dim=1) * mlp.fc2.weight.detach().norm(dim=0)


def _n_removed(total: int, ratio: float) -> int:
    return math.floor(total * ratio + 0.5)


def select_structures(
    model: VisionTransformer, ratio: float, blocks: Sequence[int] | None = None
) -> list[tuple[Tensor, Tensor]]:
    """For each block, the indices of the heads and MLP neurons to keep (sorted)."""
    require_plain(model, "Head and neuron pruning")
    require_float(model, "Head and neuron pruning")
    _check_fraction(ratio, "ratio", "the fraction of heads and neurons removed (1 or more would remove every head)")
    chosen = set(range(len(model.blocks)) if blocks is None else blocks)
    if not chosen <= set(range(len(model.blocks))):
        raise ValueError(f"blocks {sorted(chosen)} are not all in 0..{len(model.blocks) - 1}.")
    keep = []
    for i, block in enumerate(model.blocks):
        h, m = block.attn.num_heads, block.mlp.fc1.out_features
        drop_h, drop_m = (_n_removed(h, ratio), _n_removed(m, ratio)) if i in chosen else (0, 0)
        if drop_h >= h:
            raise ValueError(
                f"A pruning ratio of {ratio} would remove all {h} heads of block {i}; use a ratio below "
                f"{(h - 0.5) / h:.2f}."
            )
        heads = head_importance(block.attn).argsort(descending=True)[: h - drop_h].sort().values
        neurons = neuron_importance(block.mlp).argsort(descending=True)[: m - drop_m].sort().values
        keep.append((heads, neurons))
    return keep


def _head_rows(heads: Tensor, head_dim: int) -> Tensor:
    return (heads[:, None] * head_dim + torch.arange(head_dim, device=heads.device)).flatten()


def _narrow_mlp(mlp: Mlp, neurons: Tensor) -> Mlp:
    """A copy of ``mlp`` keeping only the hidden ``neurons`` (sorted indices), their weights unchanged."""
    new = Mlp(mlp.fc1.in_features, len(neurons)).to(mlp.fc1.weight)
    new.fc1.weight.copy_(mlp.fc1.weight[neurons])
    new.fc1.bias.copy_(mlp.fc1.bias[neurons])
    new.fc2.weight.copy_(mlp.fc2.weight[:, neurons])
    new.fc2.bias.copy_(mlp.fc2.bias)
    return new


@torch.no_grad()
def prune_structured(
    model: VisionTransformer, ratio: float, blocks: Sequence[int] | None = None
) -> VisionTransformer:
    """A copy of ``model`` with the least important ``ratio`` of heads and MLP neurons removed from
    every block (or from ``blocks``): smaller dense layers, the kept weights unchanged."""
    keep = select_structures(model, ratio, blocks)
    pruned = copy.deepcopy(model)
    D = model.cfg.embed_dim
    for block, (heads, neurons) in zip(pruned.blocks, keep):
        old, d = block.attn, block.attn.head_dim
        rows = _head_rows(heads, d)
        inner = old.num_heads * d
        qkv_rows = torch.cat([rows, rows + inner, rows + 2 * inner])
        new = Attention(D, len(heads), d).to(old.qkv.weight)
        new.qkv.weight.copy_(old.qkv.weight[qkv_rows])
        new.qkv.bias.copy_(old.qkv.bias[qkv_rows])
        new.proj.weight.copy_(old.proj.weight[:, rows])
        new.proj.bias.copy_(old.proj.bias)
        block.attn = new
        block.mlp = _narrow_mlp(block.mlp, neurons)
    return pruned


def head_dim_importance(attn: Attention) -> tuple[Tensor, Tensor]:
    """Importance of every query/key channel and of every value channel of each head, (heads, head_dim) each
    (ours; see the module docstring)."""
    h, d = attn.num_heads, attn.head_dim
    w = attn.qkv.weight.detach().view(3, h, d, -1).norm(dim=-1)  # (q/k/v, head, d)
    proj = attn.proj.weight.detach().view(-1, h, d).norm(dim=0)  # (head, d)
    return w[0] * w[1], w[2] * proj


@torch.no_grad()
def prune_head_dims(model: VisionTransformer, ratio: float) -> VisionTransformer:
    """A copy of ``model`` with every head kept and narrowed: the ``ratio`` of each head's query/key channels and of
    its value channels with the lowest :func:`head_dim_importance` removed, and the ``ratio`` of MLP neurons with the
    lowest :func:`neuron_importance`, in every block. The kept weights are unchanged except the queries, scaled by
    sqrt(d'/d) so that softmax(Q K^T / sqrt(d')) of the narrower heads keeps the model's 1/sqrt(d) scaling: the
    pruned model computes the original one with the removed channels' terms left out (the tests check it)."""
    require_plain(model, "Head-width pruning")
    require_float(model, "Head-width pruning")
    _check_fraction(ratio, "ratio", "the fraction of each head's channels and of the MLP neurons removed")
    pruned = copy.deepcopy(model)
    D = model.cfg.embed_dim
    for i, block in enumerate(pruned.blocks):
        old, h, d = block.attn, block.attn.num_heads, block.attn.head_dim
        keep_d = d - _n_removed(d, ratio)
        if keep_d < 1:
            raise ValueError(f"A ratio of {ratio} would remove every channel of block {i}'s heads of width {d}; use a "
                             f"ratio below {(d - 0.5) / d:.3f}.")
        qk_score, v_score = head_dim_importance(old)
        offsets = torch.arange(h)[:, None] * d
        qk = (qk_score.argsort(dim=1, descending=True)[:, :keep_d].sort(dim=1).values + offsets).flatten()
        v = (v_score.argsort(dim=1, descending=True)[:, :keep_d].sort(dim=1).values + offsets).flatten()
        inner = h * d
        rows = torch.cat([qk, qk + inner, v + 2 * inner])
        new = Attention(D, h, keep_d).to(old.qkv.weight)
        new.qkv.weight.copy_(old.qkv.weight[rows])
        new.qkv.bias.copy_(old.qkv.bias[rows])
        q_rows = slice(0, h * keep_d)
        new.qkv.weight[q_rows] *= (keep_d / d) ** 0.5
        new.qkv.bias[q_rows] *= (keep_d / d) ** 0.5
        new.proj.weight.copy_(old.proj.weight[:, v])
        new.proj.bias.copy_(old.proj.bias)
        block.attn = new
        m = block.mlp.fc1.out_features
        neurons = neuron_importance(block.mlp).argsort(descending=True)[: m - _n_removed(m, ratio)].sort().values
        block.mlp = _narrow_mlp(block.mlp, neurons)
    return pruned


@torch.no_grad()
def mask_structured(
    model: VisionTransformer, ratio: float, blocks: Sequence[int] | None = None
) -> VisionTransformer:
    """A copy of ``model`` in which the heads and neurons :func:`prune_structured` would remove are
    zeroed instead: same shapes, same function as the pruned model."""
    keep = select_structures(model, ratio, blocks)
    masked = copy.deepcopy(model)
    for block, (heads, neurons) in zip(masked.blocks, keep):
        attn, d = block.attn, block.attn.head_dim
        inner = attn.num_heads * d
        drop = torch.ones(attn.num_heads, dtype=torch.bool)
        drop[heads] = False
        rows = _head_rows(drop.nonzero().flatten(), d)
        for offset in (0, inner, 2 * inner):
            attn.qkv.weight[rows + offset] = 0
            attn.qkv.bias[rows + offset] = 0
        attn.proj.weight[:, rows] = 0
        gone = torch.ones(block.mlp.fc1.out_features, dtype=torch.bool)
        gone[neurons] = False
        block.mlp.fc1.weight[gone] = 0
        block.mlp.fc1.bias[gone] = 0
        block.mlp.fc2.weight[:, gone] = 0
    return masked


def removed_fraction(model: VisionTransformer, pruned: VisionTransformer) -> dict[str, float]:
    """The fraction of attention heads and of MLP neurons that ``pruned`` lacks, over all blocks.

    A ratio asks for a fraction; whole heads go in steps of 1/h, rounded to the nearest (with 3 heads a
    ratio of 0.2 removes one head, 33%, and 0.5 removes two, 67%), so notebooks report what was removed.
    """
    heads = [(a.attn.num_heads, b.attn.num_heads) for a, b in zip(model.blocks, pruned.blocks)]
    neurons = [(a.mlp.fc1.out_features, b.mlp.fc1.out_features) for a, b in zip(model.blocks, pruned.blocks)]
    return {
        "heads": 1 - sum(b for _, b in heads) / sum(a for a, _ in heads),
        "neurons": 1 - sum(b for _, b in neurons) / sum(a for a, _ in neurons),
    }
