"""Data multiplexing (S4): N images through one backbone pass.

Two wrappers around the from-scratch ViT, each a classifier of its own (images in, one row of logits per
image out), so that training, evaluation and timing treat them like any other model:

* :class:`ImageMultiplexer`, the naive adaptation of DataMUX that S4 starts from: slot i's tokens pass
  through a fixed transform (a random orthogonal matrix, or a Hadamard product with a random unit
  vector), the N transformed token sequences are superposed position by position (summed and divided by
  sqrt(N) for the orthogonal transforms, averaged for the Hadamard ones, as DataMUX's code does), the
  backbone runs once on the superposition, and one small MLP per slot (DataMUX's MLP demultiplexer)
  recovers slot i's representation for the shared head. Each image costs about 1/N of the backbone.
  Optional: DataMUX's retrieval objective (:class:`RetrievalObjective`), and a convolutional tokeniser
  (ours) in place of the linear patch embedding.
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

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import ortho_group
from torch import Tensor, nn

from ..checks import whole
from ..models import Block, Mlp, ViTConfig, VisionTransformer, init_weights
from ..models.counts import vit_macs
from ..profiles import LABEL_SMOOTHING

__all__ = ["ConcatPlexer", "ImageMultiplexer", "RetrievalHead", "RetrievalObjective", "STEM_CHANNELS", "TOKENIZERS",
           "TRANSFORMS", "macs_per_image", "method_of", "pooled_output"]

TRANSFORMS = ("orthogonal", "hadamard")
"""The Image Multiplexer's fixed per-slot transforms (DataMUX's ``random_ortho`` and ``gaussian_hadamard``)."""
TOKENIZERS = ("linear", "conv")
"""How the Image Multiplexer turns an image into tokens: the backbone's linear patch embedding, or (ours) a
small convolutional stem, a learned non-linear tokeniser standing where S4's figure puts a dVAE."""
STEM_CHANNELS = 16
"""Width of the convolutional stem's first layer (ours: small, so that the stem adds little to a multiplexer
whose backbone share is divided by N)."""


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
    """N images, one backbone pass: fixed per-slot transforms, a superposition, per-slot MLPs.

    The transforms are buffers, never trained (DataMUX's default, ``learn_muxing=0``: the backbone must learn to
    work on the superposition, not the mixing to become trivial); they are drawn from ``seed`` with NumPy's
    generator, apart from torch's (whose same seed draws the initial weights). As DataMUX's code:
    ``orthogonal``: a Haar-random orthogonal D x D matrix Q_i per slot (``scipy.stats.ortho_group``), token x of
    slot i becomes Q_i x, and the N slots are summed and divided by sqrt(N) (D^2 MACs per token);
    ``hadamard``: the element-wise product with a Gaussian vector of unit norm per slot, and the N slots are
    averaged (0 MACs by fvcore's convention: an element-wise product is not a multiply-accumulate).
    Demultiplexing (DataMUX's MLP variant): slot i's representation is MLP_i of the pooled backbone output,
    D -> D -> D with GELU (our design: the pooled vector, not every token, since the task is classification);
    then the backbone's final pooling norm and its head, shared by the slots.

    ``tokenizer="conv"`` (ours): the image is tokenised by a small convolutional stem (a 3 x 3 convolution to
    :data:`STEM_CHANNELS` channels, GELU, then a p x p convolution of stride p to width D) instead of the
    backbone's linear patch embedding; the class token and position embeddings are the backbone's.

    ``retrieval=True`` adds DataMUX's retrieval head (:class:`RetrievalHead`); the model then returns
    ``(logits, tokens)`` in training mode (one backbone pass for both objectives) and must be trained with a
    :class:`RetrievalObjective`. In eval mode it returns logits, like every classifier.
    """

    def __init__(self, vit: VisionTransformer, n: int, transform: str = "orthogonal", seed: int = 0,
                 tokenizer: str = "linear", retrieval: bool = False) -> None:
        super().__init__()
        cfg = _check_vit(vit, "ImageMultiplexer")
        whole("n", n, minimum=1)
        whole("seed", seed, minimum=0)
        if transform not in TRANSFORMS:
            raise ValueError(f"Unknown transform {transform!r}; choose one of {', '.join(TRANSFORMS)}.")
        if tokenizer not in TOKENIZERS:
            raise ValueError(f"Unknown tokenizer {tokenizer!r}; choose one of {', '.join(TOKENIZERS)}.")
        if retrieval and not cfg.class_token:
            raise ValueError("The retrieval head reads the patch tokens after the class token; build the backbone "
                             "with class_token=True to use retrieval=True.")
        self.vit, self.n, self.transform, self.tokenizer = vit, n, transform, tokenizer
        D = cfg.embed_dim
        rng = np.random.default_rng(seed)
        if transform == "orthogonal":
            mix = np.stack([ortho_group.rvs(D, random_state=rng) for _ in range(n)]) if D > 1 else np.ones((n, 1, 1))
        else:
            gauss = rng.standard_normal((n, D))
            mix = gauss / np.linalg.norm(gauss, axis=1, keepdims=True)
        self.register_buffer("mix", torch.from_numpy(mix).float())
        self.demux = nn.ModuleList(Mlp(D, D) for _ in range(n))
        init_weights(self.demux)
        self.stem: nn.Module | None = None
        if tokenizer == "conv":
            p = cfg.patch_size
            self.stem = nn.Sequential(nn.Conv2d(cfg.in_chans, STEM_CHANNELS, 3, padding=1), nn.GELU(),
                                      nn.Conv2d(STEM_CHANNELS, D, p, stride=p))
        self.retrieval_head = RetrievalHead(n, D, cfg.in_chans * cfg.patch_size**2) if retrieval else None

    def tokens(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) -> tokens (B, T, D): the backbone's embedding, or the convolutional stem's patches
        with the backbone's class token and position embeddings."""
        if self.stem is None:
            return self.vit.embed(x)
        t = self.stem(x).flatten(2).transpose(1, 2)
        vit = self.vit
        if vit.cls_token is not None:
            t = torch.cat([vit.cls_token.expand(t.shape[0], -1, -1), t], dim=1)
        return t + vit.pos_embed

    def multiplex(self, x: Tensor) -> Tensor:
        """Images (G n, C, H, W) -> the backbone's input (G, T, D): each slot's tokens transformed, then
        superposed over the n slots of each group (orthogonal: sum / sqrt(n); Hadamard: mean)."""
        t = self.tokens(x)
        t = t.view(-1, self.n, *t.shape[1:])  # (G, n, T, D)
        if self.transform == "orthogonal":
            # (G, n, T, D) @ (n, D, D)^T: every token x of slot i becomes Q_i x
            return torch.matmul(t, self.mix.transpose(-1, -2)).sum(1) / math.sqrt(self.n)
        return (t * self.mix[None, :, None, :]).mean(1)

    def backbone(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W), padded to whole groups -> the backbone's normed output tokens (G, T, D)."""
        x, _ = _pad(x, self.n)
        h = self.multiplex(x)
        for block in self.vit.blocks:
            h, _ = block(h)
        return self.vit.norm(h)

    def representation(self, x: Tensor) -> Tensor:
        """The one backbone pass per group: its pooled output, before demultiplexing, (G, D). Also what a
        linear probe reads to ask how much of each slot's image survives the superposition."""
        return _pool(self.vit, self.backbone(x))

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        tokens = self.backbone(x)
        pooled = _pool(self.vit, tokens)  # (G, D)
        slots = torch.stack([demux(pooled) for demux in self.demux], 1)  # (G, n, D)
        logits = self.vit.head(self.vit.fc_norm(slots)).flatten(0, 1)[: x.shape[0]]  # padding's rows dropped
        if self.retrieval_head is not None and self.training:
            return logits, tokens
        return logits

    def retrieval_loss(self, x: Tensor, tokens: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """DataMUX's retrieval task on images: at every patch position of every group, one slot is drawn
        uniformly at random, and the retrieval head must recover that slot's input at that position from the
        backbone's output token there. DataMUX's input is a token id, scored by cross-entropy over the
        vocabulary; a linear patch embedding has no vocabulary, so the target here is the slot's patch itself,
        its C p^2 (standardised) pixels, scored by the mean squared error (ours). ``tokens``: the backbone's
        output for ``x`` (what the model returns beside the logits in training mode)."""
        if self.retrieval_head is None:
            raise ValueError("This ImageMultiplexer has no retrieval head; build it with retrieval=True.")
        x, _ = _pad(x, self.n)
        G, P = tokens.shape[0], self.vit.cfg.num_patches
        p = self.vit.cfg.patch_size
        patches = F.unfold(x, kernel_size=p, stride=p).transpose(1, 2)  # (G n, P, C p^2), row-major as the grid
        patches = patches.reshape(G, self.n, P, -1)
        slot = torch.randint(self.n, (G, P), generator=generator).to(x.device)
        target = patches.gather(1, slot[:, None, :, None].expand(G, 1, P, patches.shape[-1])).squeeze(1)
        predicted = self.retrieval_head(tokens[:, self.vit.num_prefix_tokens:], slot)
        return F.mse_loss(predicted.float(), target.float())


class RetrievalHead(nn.Module):
    """DataMUX's MLP retrieval head (``RetrievalHeadMLPDemultiplexing``), for image patches.

    Each position's output token goes through the demultiplexing MLP of the slot drawn for it (Linear D -> D,
    GELU, LayerNorm; one per slot, apart from the classifier's demultiplexer, as in DataMUX), then through
    layers shared by the slots (Linear, GELU, LayerNorm) and a decoder to the target's size: DataMUX decodes to
    its vocabulary, here to the patch's pixels. DataMUX's dropout before the per-slot MLP is left out: the
    backbone here trains without dropout.
    """

    def __init__(self, n: int, dim: int, out: int) -> None:
        super().__init__()
        self.demux = nn.ModuleList(nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim)) for _ in range(n))
        self.shared = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim))
        self.decoder = nn.Linear(dim, out)
        init_weights(self)

    def forward(self, tokens: Tensor, slot: Tensor) -> Tensor:
        """``tokens`` (G, P, D) and the slot drawn at each position (G, P) -> the predicted targets (G, P, out)."""
        h = torch.zeros_like(tokens)
        for i, demux in enumerate(self.demux):
            here = slot == i
            h[here] = demux(tokens[here]).to(h.dtype)
        return self.decoder(self.shared(h))


class RetrievalObjective:
    """DataMUX's training schedule as a ``train.fit`` ``loss=``: retrieval warm-up, then the task with retrieval.

    DataMUX first trains on the retrieval task alone (``run_glue.sh``'s ``retrieval_pretraining``: retrieval
    coefficient 1, task 0), then fine-tunes on the task with the retrieval loss kept beside it (task 0.9,
    retrieval 0.1). DataMUX's warm-up is a separate pre-training run on WikiText; here (ours) it is the first
    ``warmup_steps`` steps of the same training budget, on the same images, so that every model gets the same
    steps. The task loss is cross-entropy with label smoothing, as :func:`vitsurvey.train.label_loss`. Counts
    its calls: use a fresh one per training.
    """

    def __init__(self, warmup_steps: int, task_coeff: float = 0.9, retrieval_coeff: float = 0.1) -> None:
        whole("warmup_steps", warmup_steps, minimum=0)
        for name, value in (("task_coeff", task_coeff), ("retrieval_coeff", retrieval_coeff)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {value!r}.")
        self.warmup_steps, self.task_coeff, self.retrieval_coeff = warmup_steps, task_coeff, retrieval_coeff
        self.step = 0

    def __call__(self, model: nn.Module, images: Tensor, labels: Tensor, outputs: Tensor | tuple[Tensor, ...]) -> Tensor:
        if not (isinstance(model, ImageMultiplexer) and model.retrieval_head is not None and isinstance(outputs, tuple)):
            raise TypeError("RetrievalObjective trains an ImageMultiplexer built with retrieval=True (which returns "
                            "logits and tokens in training mode); build the model with retrieval=True.")
        logits, tokens = outputs
        retrieval = model.retrieval_loss(images, tokens)
        warm = self.step < self.warmup_steps
        self.step += 1
        if warm:
            return retrieval
        task = F.cross_entropy(logits.float(), labels, label_smoothing=LABEL_SMOOTHING)
        return self.task_coeff * task + self.retrieval_coeff * retrieval


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
    not used). With n = 1 this is a ViT over the k abstract tokens. S4's figure (on a co-author's site) draws one
    shared class token before the N token sets and one DeMUX per slot instead; this slot-wise pooling is ours.
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

    A group of n images costs n patch embeddings (or convolutional stems), n transforms (or patchifiers and
    C-multiplexers), one backbone pass, n demultiplexers and n heads; per image, the backbone's share is divided
    by n. A retrieval head is a training objective, not part of inference: it is not counted. The
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
    if isinstance(model, ImageMultiplexer) and model.stem is not None:
        side, p, C = cfg.img_size, cfg.patch_size, cfg.in_chans
        out["patch_embed"] = side * side * C * 9 * STEM_CHANNELS + cfg.num_patches * STEM_CHANNELS * p * p * D
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
        extras = [e for e, on in (("conv tokeniser, ours", model.stem is not None),
                                  ("retrieval warm-up", model.retrieval_head is not None)) if on]
        return {"method": f"Image Multiplexer ({', '.join([model.transform, *extras])})", "n": model.n, "k": None}
    if isinstance(model, ConcatPlexer):
        return {"method": "ConcatPlexer", "n": model.n, "k": model.k}
    return {"method": "ViT", "n": 1, "k": None}
