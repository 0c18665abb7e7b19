"""Data multiplexing (S4): N images through one backbone pass.

Two wrappers around the from-scratch ViT, each a classifier of its own (images in, one row of logits per
image out), so that training, evaluation and timing treat them like any other model:

* :class:`ImageMultiplexer`, the naive adaptation of DataMUX that S4 starts from: slot i's tokens pass
  through a fixed transform (a random orthogonal matrix, or a Hadamard product with a random vector),
  the N transformed token sequences are averaged position by position, the backbone runs once on the
  average, and one small MLP per slot (DataMUX's MLP demultiplexer) recovers slot i's representation for
  the shared head. Each image costs about 1/N of the backbone.
* :class:`ConcatPlexer`: each image is reduced to ``k`` abstract tokens (a Transformer "patchifier", then a
  convolutional "C-multiplexer"), the N token sets are concatenated along the token axis ("dim-1
  batching"), and the backbone runs once over N k tokens; slot i's output tokens are pooled and sent to
  the shared head.

What S4 does not publish (token counts, N, layer sizes, the demultiplexer), we chose; each choice is
marked "our design" where it is made. The N images of a group are consecutive images of the batch; a
batch that is not a multiple of N is padded with blank images whose outputs are dropped (so the last
group of an epoch mixes its real images with zeros, as a served batch would). Neither model accepts
``token_step``: token reduction and attention maps are for plain ViTs.

Both are written here by hand: no maintained library implements S4 (there is no code release), and
DataMUX's code is for text.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from ..checks import whole
from ..models import Block, Mlp, ViTConfig, VisionTransformer, init_weights
from ..models.counts import vit_macs

__all__ = ["ConcatPlexer", "ImageMultiplexer", "TRANSFORMS", "macs_per_image", "method_of", "pooled_output"]

TRANSFORMS = ("orthogonal", "hadamard")
"""The Image Multiplexer's fixed per-slot transforms (DataMUX's two kinds)."""


def _check_vit(vit: nn.Module, what: str) -> ViTConfig:
    if not isinstance(vit, VisionTransformer):
        raise TypeError(f"{what} wraps vitsurvey's VisionTransformer, not {type(vit).__name__}; build the backbone "
                        "with vitsurvey.models.VisionTransformer(cfg).")
    if vit.cfg.mixer != "attention":
        raise ValueError(f"{what} needs softmax attention in the backbone (a mixer for any token count); this one "
                         f"has mixer {vit.cfg.mixer!r}.")
    if ViTConfig.of(vit) is None:
        raise ValueError(f"{what} needs an unpruned backbone whose blocks match its config.")
    return vit.cfg


def _pad(x: Tensor, n: int) -> tuple[Tensor, int]:
    """``x`` padded with blank images to a multiple of ``n``, and the number of real images."""
    if x.ndim != 4:
        raise ValueError(f"Expected a batch of images (B, C, H, W), got shape {tuple(x.shape)}.")
    b = x.shape[0]
    extra = -b % n
    if extra:
        x = torch.cat([x, x.new_zeros(extra, *x.shape[1:])])
    return x, b


def _pool(vit: VisionTransformer, tokens: Tensor) -> Tensor:
    """The backbone's own pooling of its normed output tokens (class token, or mean of the patches)."""
    if vit.cfg.global_pool == "avg":
        return tokens[:, vit.num_prefix_tokens:].mean(1)
    return tokens[:, 0]


class ImageMultiplexer(nn.Module):
    """N images, one backbone pass: fixed per-slot transforms, a position-wise average, per-slot MLPs.

    The transforms are buffers, never trained (DataMUX's choice: the backbone must learn to work on the
    superposition, not the mixing to become trivial); they are drawn from ``seed``. ``orthogonal``: a
    random orthogonal D x D matrix per slot, applied to every token (D^2 MACs per token); ``hadamard``:
    the element-wise product with a random Gaussian vector per slot (0 MACs by fvcore's convention: an
    element-wise product is not a multiply-accumulate). Demultiplexing (DataMUX's MLP variant): slot i's
    representation is MLP_i of the pooled backbone output, D -> D -> D with GELU (our design: the pooled
    vector, not every token, since the task is classification); then the backbone's final pooling norm and
    its head, shared by the slots.
    """

    def __init__(self, vit: VisionTransformer, n: int, transform: str = "orthogonal", seed: int = 0) -> None:
        super().__init__()
        cfg = _check_vit(vit, "ImageMultiplexer")
        whole("n", n, minimum=1)
        if transform not in TRANSFORMS:
            raise ValueError(f"Unknown transform {transform!r}; choose one of {', '.join(TRANSFORMS)}.")
        self.vit, self.n, self.transform = vit, n, transform
        D = cfg.embed_dim
        g = torch.Generator().manual_seed(seed)
        if transform == "orthogonal":
            q, r = torch.linalg.qr(torch.randn(n, D, D, generator=g))
            # the sign fix makes Q Haar-distributed (QR alone is biased towards some orientations)
            self.register_buffer("mix", q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2))
        else:
            self.register_buffer("mix", torch.randn(n, D, generator=g))
        self.demux = nn.ModuleList(Mlp(D, D) for _ in range(n))
        init_weights(self.demux)

    def multiplex(self, x: Tensor) -> Tensor:
        """Images (G n, C, H, W) -> the backbone's input (G, T, D): each slot's embedded tokens transformed,
        then averaged over the n slots of each group."""
        t = self.vit.embed(x)
        t = t.view(-1, self.n, *t.shape[1:])  # (G, n, T, D)
        if self.transform == "orthogonal":
            t = torch.matmul(t, self.mix)  # (G, n, T, D) @ (n, D, D): slot i's tokens times its own matrix
        else:
            t = t * self.mix[None, :, None, :]
        return t.mean(1)

    def representation(self, x: Tensor) -> Tensor:
        """The one backbone pass per group: its pooled output, before demultiplexing, (G, D). Also what a
        linear probe reads to ask how much of each slot's image survives the superposition."""
        x, _ = _pad(x, self.n)
        h = self.multiplex(x)
        for block in self.vit.blocks:
            h, _ = block(h)
        return _pool(self.vit, self.vit.norm(h))

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.representation(x)  # (G, D)
        slots = torch.stack([demux(pooled) for demux in self.demux], 1)  # (G, n, D)
        logits = self.vit.head(self.vit.fc_norm(slots))
        return logits.flatten(0, 1)[: x.shape[0]]  # padding's rows dropped


class ConcatPlexer(nn.Module):
    """N images, one backbone pass over N k tokens: patchifier, C-multiplexer, dim-1 concatenation.

    Our design after S4's description: the *patchifier* is the backbone's own patch embedding (with its
    position embeddings) followed by ``patchifier_depth`` Transformer blocks of the backbone's width, run on
    each image alone; the *C-multiplexer* is a convolution with kernel and stride s over the patch grid,
    which turns the g x g patches into k = (g/s)^2 abstract tokens (so k must be a square whose side divides
    g). The N token sets are concatenated along the token axis, each set with a learned slot embedding
    (added only when n > 1) so that the backbone can tell the images apart; the backbone's blocks run once
    over the N k tokens, attending across images. Demultiplexing: slot i's k output tokens, after the
    backbone's final norm, are averaged, then the shared pooling norm and head (the backbone's class token is
    not used). With n = 1 this is a ViT over the k abstract tokens.
    """

    def __init__(self, vit: VisionTransformer, n: int, k: int, patchifier_depth: int = 1) -> None:
        super().__init__()
        cfg = _check_vit(vit, "ConcatPlexer")
        whole("n", n, minimum=1)
        whole("k", k, minimum=1)
        whole("patchifier_depth", patchifier_depth, minimum=1)
        side = math.isqrt(k)
        if side * side != k or cfg.grid % side:
            sides = [s for s in range(1, cfg.grid + 1) if cfg.grid % s == 0]
            raise ValueError(f"k={k} abstract tokens cannot be cut from a {cfg.grid} x {cfg.grid} patch grid: k must be "
                             f"the square of a divisor of {cfg.grid}, one of {', '.join(str(s * s) for s in sides)}.")
        self.vit, self.n, self.k, self.stride = vit, n, k, cfg.grid // side
        D = cfg.embed_dim
        self.patchifier = nn.ModuleList(Block(D, cfg.num_heads, cfg.mlp_hidden) for _ in range(patchifier_depth))
        self.cmux = nn.Conv2d(D, D, kernel_size=self.stride, stride=self.stride)
        self.slot_embed = nn.Parameter(torch.zeros(1, n, 1, D)) if n > 1 else None
        init_weights(self.patchifier)
        if self.slot_embed is not None:
            nn.init.trunc_normal_(self.slot_embed, std=0.02)

    def patchify(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) -> k abstract tokens each (B, k, D), every image on its own."""
        vit = self.vit
        t = vit.patch_embed(x) + vit.pos_embed[:, vit.num_prefix_tokens:]
        for block in self.patchifier:
            t, _ = block(t)
        g = vit.cfg.grid
        grid = t.transpose(1, 2).reshape(t.shape[0], -1, g, g)  # (B, D, g, g)
        return self.cmux(grid).flatten(2).transpose(1, 2)

    def concatenate(self, x: Tensor) -> Tensor:
        """Images (G n, C, H, W) -> the backbone's input (G, n k, D): slot i's tokens at i k ... (i + 1) k - 1."""
        z = self.patchify(x).view(-1, self.n, self.k, self.vit.cfg.embed_dim)
        if self.slot_embed is not None:
            z = z + self.slot_embed
        return z.flatten(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        x, b = _pad(x, self.n)
        h = self.concatenate(x)
        for block in self.vit.blocks:
            h, _ = block(h)
        slots = self.vit.norm(h).view(h.shape[0], self.n, self.k, -1).mean(2)  # (G, n, D)
        logits = self.vit.head(self.vit.fc_norm(slots))
        return logits.flatten(0, 1)[:b]


def pooled_output(model: nn.Module, x: Tensor) -> Tensor:
    """What the head (or the demultiplexer) reads: the pooled backbone output, one D-vector per image for a
    plain ViT and one per group of n images for an :class:`ImageMultiplexer`. For linear probes."""
    if isinstance(model, ImageMultiplexer):
        return model.representation(x)
    if isinstance(model, VisionTransformer):
        return _pool(model, model.forward_features(x))
    raise TypeError(f"pooled_output reads a VisionTransformer or an ImageMultiplexer, not {type(model).__name__}.")


def _block_macs(cfg: ViTConfig, tokens: int) -> int:
    """MACs of one Transformer block of ``cfg``'s width over ``tokens`` tokens (:func:`vit_macs`'s convention)."""
    one = vit_macs(replace(cfg, depth=1), tokens=tokens)
    return one["total"] - one["patch_embed"] - one["head"] - 5 * cfg.embed_dim * (
        tokens if cfg.global_pool == "token" else 1)


def macs_per_image(model: nn.Module) -> dict[str, float]:
    """Analytic MACs per image of a multiplexer (or of a plain from-scratch ViT), per component.

    A group of n images costs n patch embeddings, n transforms (or patchifiers and C-multiplexers), one
    backbone pass, n demultiplexers and n heads; per image, the backbone's share is divided by n. The
    conventions are :func:`vitsurvey.models.counts.vit_macs`'s (fvcore's): matrix products and convolutions
    count their multiply-adds, LayerNorm 5 per element, element-wise products, averages, GELU and softmax 0.
    """
    if isinstance(model, VisionTransformer):
        plain = vit_macs(model.cfg)
        return {"patch_embed": plain["patch_embed"], "backbone": plain["total"] - plain["patch_embed"] - plain["head"],
                "head": plain["head"], "total": plain["total"]}
    if not isinstance(model, (ImageMultiplexer, ConcatPlexer)):
        raise TypeError(f"No multiplexing MAC formula for {type(model).__name__}.")
    cfg, n = model.vit.cfg, model.n
    D, L = cfg.embed_dim, cfg.depth
    plain = vit_macs(cfg)
    avg_norm = 5 * D if cfg.global_pool == "avg" else 0  # the pooling norm, once per slot
    out: dict[str, float] = {"patch_embed": plain["patch_embed"]}
    if isinstance(model, ImageMultiplexer):
        T = cfg.num_tokens
        out["transform"] = T * D * D if model.transform == "orthogonal" else 0
        final = 5 * D * T if cfg.global_pool == "token" else 0
        out["backbone"] = (L * _block_macs(cfg, T) + final) / n
        out["demux"] = 2 * D * D
    else:
        P, k = cfg.num_patches, model.k
        out["patchifier"] = len(model.patchifier) * _block_macs(cfg, P)
        out["c_multiplexer"] = k * D * D * model.stride**2
        out["backbone"] = (L * _block_macs(cfg, n * k) + (5 * D * n * k if cfg.global_pool == "token" else 0)) / n
    out["head"] = avg_norm + plain["head"]
    out["total"] = sum(out.values())
    return out


def method_of(model: nn.Module) -> dict[str, Any]:
    """Method name and setting of a plain ViT or a multiplexer, as results rows spell them."""
    if isinstance(model, ImageMultiplexer):
        return {"method": f"Image Multiplexer ({model.transform})", "n": model.n, "k": None}
    if isinstance(model, ConcatPlexer):
        return {"method": "ConcatPlexer", "n": model.n, "k": model.k}
    return {"method": "ViT", "n": 1, "k": None}
