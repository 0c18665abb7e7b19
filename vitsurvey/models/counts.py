"""How big a model is: parameters counted on a built model, and parameters and MACs of a ViT from its shape.

The counted sizes (:func:`count_params`, :func:`nonzero_params`) read whatever a model holds, torch.ao's
packed int8 weights included (:func:`packed_weights`). The analytic ones (:func:`vit_params`,
:func:`vit_macs`) are the formulas of notebook 01, per component, with fvcore's conventions so that each
term can be checked against fvcore's count of the real model (:func:`vitsurvey.measure.count_macs`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from . import mixers
from .vit import ViTConfig

__all__ = ["count_params", "nonzero_params", "packed_weights", "vit_macs", "vit_params"]


def count_params(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of parameters; S3 counts trainable ones, which is the default. The weights that torch.ao's
    quantized layers hold packed count too (:func:`packed_weights`): an int8 model has the parameters of
    its float source, only stored in fewer bits."""
    plain = sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
    return plain + sum(t.numel() for t in packed_weights(model))


def packed_weights(model: nn.Module) -> list[torch.Tensor]:
    """The weight and bias tensors that torch.ao's quantized layers (int8 ``Linear``, ``Conv``) keep packed
    outside ``parameters()`` and ``buffers()``; without them an int8 model's parameter count and memory
    would miss every quantized layer. A layer that delegates to a packed child is read once, at the child."""

    def packs(m: nn.Module) -> bool:
        return callable(getattr(m, "_weight_bias", None)) and type(m).__module__.startswith("torch.ao")

    return [t for m in model.modules() if packs(m) and not any(packs(c) for c in m.children())
            for t in m._weight_bias() if t is not None]


def nonzero_params(model: nn.Module) -> int:
    """Parameters that are not exactly zero (what storage in a sparse format would keep, and what unstructured
    pruning saves), packed int8 weights included (zero after rounding to int8: a weight smaller than half a
    step becomes one)."""
    tensors = [*model.parameters(), *packed_weights(model)]
    return int(sum(int(torch.count_nonzero(t.dequantize() if t.is_quantized else t)) for t in tensors))


def vit_params(cfg: ViTConfig) -> dict[str, int]:
    """Parameters of a plain ViT per component (the formulas of notebook 01); a mixer other than
    softmax attention replaces ``qkv`` and ``attn_proj`` by ``mixer`` (:func:`vitsurvey.models.mixers.params`)."""
    D, M, P = cfg.embed_dim, cfg.mlp_hidden, cfg.patch_size
    mixing = ({"qkv": 3 * D * D + 3 * D, "attn_proj": D * D + D} if cfg.mixer == "attention"
              else {"mixer": mixers.params(cfg)})
    per_block = {
        "layer_norms": 2 * 2 * D,
        **mixing,
        "mlp": D * M + M + M * D + D,
    }
    out = {
        "patch_embed": cfg.in_chans * P * P * D + D,
        "cls_and_pos": cfg.num_prefix_tokens * D + cfg.num_tokens * D,
        **{k: v * cfg.depth for k, v in per_block.items()},
        "final_norm": 2 * D,
        "head": D * cfg.num_classes + cfg.num_classes,
    }
    out["total"] = sum(out.values())
    return out


def vit_macs(
    vit: ViTConfig | nn.Module,
    tokens: int | Sequence[int] | None = None,
    merges: Sequence[int] | None = None,
    mlp_tokens: Sequence[int] | None = None,
) -> dict[str, int]:
    """MACs of one image through a plain ViT, per component.

    ``vit`` is a :class:`ViTConfig`, or a :class:`~vitsurvey.models.VisionTransformer` whose blocks may
    have been pruned to fewer heads or MLP neurons (their actual shapes are read). ``tokens`` is the
    number of tokens entering every block, or a list with one count per block (token reduction);
    default the prefix tokens (the class token, and a distillation token where the model has one) plus
    the patches. ``merges`` (ToMe) is the number of tokens merged inside each block, between
    attention and MLP: that block's MLP and second LayerNorm then see ``tokens - merges`` tokens, and the
    bipartite matching costs ceil(N/2) * floor(N/2) * d MACs (cosine similarities of the head-averaged
    keys, d the head width). ``mlp_tokens`` (EViT) is the number of tokens entering each block's MLP where a
    block keeps some of its tokens between attention and MLP without matching them. The final LayerNorm sees
    what the last block outputs.

    A mixer other than softmax attention (``cfg.mixer``) replaces the four attention terms by its own
    (:func:`vitsurvey.models.mixers.macs`); such a model has a fixed token count, so ``tokens`` and ``merges``
    must stay unset. With average pooling the final LayerNorm sees one vector per image.

    Conventions follow fvcore so the two can be compared term by term: a matrix product counts its
    multiply-adds; LayerNorm counts 5 per element; biases, residual adds, softmax and GELU count 0.
    """
    cfg = vit if isinstance(vit, ViTConfig) else vit.cfg  # type: ignore[union-attr]
    D, L = cfg.embed_dim, cfg.depth
    if cfg.mixer != "attention":
        if tokens is not None or merges is not None or mlp_tokens is not None:
            raise ValueError(f"The {cfg.mixer!r} mixer is built for a fixed token count: token reduction needs "
                             "softmax attention, so leave tokens and merges unset.")
        out = dict.fromkeys(mixers.macs(cfg), 0)
        for _ in range(L):
            for k, v in mixers.macs(cfg).items():
                out[k] += v
        N = cfg.num_tokens
        out["mlp"] = L * 2 * N * D * cfg.mlp_hidden
        out["layer_norm"] = L * 10 * N * D + 5 * D * (N if cfg.global_pool == "token" else 1)
        out = {"patch_embed": cfg.num_patches * cfg.in_chans * cfg.patch_size**2 * D, **out,
               "head": D * cfg.num_classes}
        out["total"] = sum(out.values())
        return out
    if isinstance(vit, ViTConfig):
        shapes = [(cfg.embed_dim, cfg.mlp_hidden, cfg.num_heads)] * L  # (attention width h*d, MLP hidden, heads)
    else:
        shapes = [(b.attn.num_heads * b.attn.head_dim, b.mlp.fc1.out_features, b.attn.num_heads)  # type: ignore[union-attr]
                  for b in vit.blocks]  # type: ignore[union-attr]
    prefix = getattr(vit, "num_prefix_tokens", cfg.num_prefix_tokens)
    default = cfg.num_patches + prefix
    counts = [default] * L if tokens is None else [tokens] * L if isinstance(tokens, int) else list(tokens)
    if merges is not None and mlp_tokens is not None:
        raise ValueError("Give merges (ToMe) or mlp_tokens (EViT), not both: each says how many tokens reach the MLP.")
    merged = [0] * L if merges is None else list(merges)
    if mlp_tokens is not None:
        merged = [n - m for n, m in zip(counts, mlp_tokens)] if len(list(mlp_tokens)) == len(counts) else []
        if any(not 1 <= m <= n for n, m in zip(counts, mlp_tokens)):
            raise ValueError(f"mlp_tokens {list(mlp_tokens)}: each block's MLP sees 1 to the tokens that entered it "
                             f"({counts}).")
    if len(counts) != L or len(merged) != L:
        raise ValueError(f"tokens and merges (or mlp_tokens) need one count per block ({L} blocks); "
                         f"got {len(counts)} and {len(merged)}.")
    out = dict.fromkeys(["qkv", "attn_scores", "attn_values", "attn_proj", "mlp", "layer_norm"], 0)
    matching = merges is not None and any(merged)
    if matching:
        out["token_matching"] = 0
    for N, r, (inner, hidden, heads) in zip(counts, merged, shapes):
        if matching and not 0 <= r <= (N - 1) // 2:
            raise ValueError(f"{r} merges in a block of {N} tokens: ToMe can merge 0 to {(N - 1) // 2}.")
        out["qkv"] += N * D * 3 * inner
        out["attn_scores"] += N * N * inner  # Q K^T over all heads: h * N^2 * d
        out["attn_values"] += N * N * inner  # A V
        out["attn_proj"] += N * inner * D
        out["mlp"] += 2 * (N - r) * D * hidden
        out["layer_norm"] += 5 * N * D + 5 * (N - r) * D
        if matching and r:
            out["token_matching"] += ((N + 1) // 2) * (N // 2) * (inner // heads)
    out["layer_norm"] += 5 * D * ((counts[-1] - merged[-1]) if cfg.global_pool == "token" else 1)  # the final norm
    heads = 2 if getattr(vit, "head_dist", None) is not None else 1  # DeiT's distillation head
    out = {"patch_embed": cfg.num_patches * cfg.in_chans * cfg.patch_size**2 * D, **out,
           "head": heads * D * cfg.num_classes}
    out["total"] = sum(out.values())
    return out


# --------------------------------------------------------------------------- timing
