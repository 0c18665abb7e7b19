"""The layers of a Transformer block: softmax attention, the MLP, the pre-norm block around them.

:class:`Attention` is also the first token mixer: like every mixer in :mod:`vitsurvey.models.mixers` it
carries its own MACs, parameters and config check (:class:`TokenMixer`), so the analytic counts of a
model read the layer that runs. :func:`split_qkv` is the one place where a fused projection is cut into
per-head queries, keys and values; the mixers, token merging and simulated quantization all use it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from .vit import ViTConfig

__all__ = ["Attention", "Block", "Mlp", "TokenMixer", "merge_heads", "split_qkv"]


def split_qkv(fused: Tensor, num_heads: int, head_dim: int) -> tuple[Tensor, ...]:
    """Cut a fused projection (B, N, parts x heads x head_dim) into its parts (Q, K, V; or K, V), each
    (B, heads, N, head_dim): the layout of timm's fused ``qkv`` layer, whose weights load unchanged."""
    B, N, width = fused.shape
    parts = width // (num_heads * head_dim)
    return fused.reshape(B, N, parts, num_heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)


def merge_heads(out: Tensor) -> Tensor:
    """(B, heads, N, head_dim) -> (B, N, heads x head_dim): the heads side by side again."""
    B, h, N, d = out.shape
    return out.transpose(1, 2).reshape(B, N, h * d)


class TokenMixer(nn.Module):
    """What every token mixer states about itself, so that configs, counts and the model read one place.

    A mixer is built from a :class:`~vitsurvey.models.ViTConfig` (:meth:`build`), refuses settings it cannot
    run (:meth:`check`), and knows its analytic cost: :meth:`macs` on N tokens (fvcore's conventions, per
    component), :meth:`params` of one layer, and :meth:`crossover_tokens`, the token count above which it
    needs fewer MACs than softmax attention. :func:`vitsurvey.models.mixers.register` files a mixer by name.
    """

    @classmethod
    def build(cls, cfg: ViTConfig, index: int) -> nn.Module:
        """The mixer of block ``index``."""
        raise NotImplementedError

    @classmethod
    def check(cls, cfg: ViTConfig) -> None:
        """Raise a ValueError naming the field and the fix when ``cfg``'s setting cannot be built."""

    @staticmethod
    def macs(cfg: ViTConfig, tokens: int) -> dict[str, int]:
        """MACs of one layer on ``tokens`` tokens, per component."""
        raise NotImplementedError

    @staticmethod
    def params(cfg: ViTConfig) -> int:
        """Parameters of one layer."""
        raise NotImplementedError

    @staticmethod
    def crossover_tokens(cfg: ViTConfig) -> float:
        """The token count above which this mixer needs fewer MACs than softmax attention."""
        return math.inf


class Attention(TokenMixer):
    """Multi-head self-attention, softmax(Q K^T / sqrt(d)) V, with one fused QKV projection."""

    def __init__(self, dim: int, num_heads: int, head_dim: int | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim or dim // num_heads  # a pruned block keeps d and loses heads
        self.scale = self.head_dim**-0.5
        inner = num_heads * self.head_dim
        self.qkv = nn.Linear(dim, 3 * inner)
        self.proj = nn.Linear(inner, dim)

    def probabilities(self, q: Tensor, k: Tensor) -> Tensor:
        """softmax(Q K^T / sqrt(d)), (B, heads, N, N)."""
        return ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)

    def forward(self, x: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        q, k, v = split_qkv(self.qkv(x), self.num_heads, self.head_dim)  # each (B, heads, N, head_dim)
        if need_weights:
            attn = self.probabilities(q, k)
            out = attn @ v
        else:  # the fused kernel never materialises the N x N matrix
            attn = None
            out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(merge_heads(out)), attn

    @classmethod
    def build(cls, cfg: ViTConfig, index: int) -> Attention:
        return cls(cfg.embed_dim, cfg.num_heads)

    @staticmethod
    def macs(cfg: ViTConfig, tokens: int) -> dict[str, int]:
        N, D = tokens, cfg.embed_dim
        return {"qkv": 3 * N * D * D, "attn_scores": N * N * D, "attn_values": N * N * D, "attn_proj": N * D * D}

    @staticmethod
    def params(cfg: ViTConfig) -> int:
        D = cfg.embed_dim
        return 4 * D * D + 4 * D


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm Transformer block: x + Mix(LN(x)), then x + MLP(LN(x)). The mixer is softmax attention
    unless another is handed in (:mod:`vitsurvey.models.mixers`); it keeps the name ``attn`` either way."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, mixer: nn.Module | None = None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = mixer if mixer is not None else Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_hidden)

    def forward(self, x: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        if isinstance(self.attn, Attention):
            y, attn = self.attn(self.norm1(x), need_weights)
        elif need_weights:
            raise ValueError(f"{type(self.attn).__name__} forms no attention matrix: attention maps, token steps and "
                             "token reduction need softmax attention (mixer='attention').")
        else:
            y, attn = self.attn(self.norm1(x)), None
        x = x + y
        x = x + self.mlp(self.norm2(x))
        return x, attn
