"""A Vision Transformer written from first principles: its config, the model, and what wraps it needs.

:class:`VisionTransformer` follows Dosovitskiy et al. (2021) as timm implements it, module for
module and name for name, so that a timm ``VisionTransformer`` state dict loads into it unchanged and
gives the same logits. Being our own code, it can expose what later notebooks need and timm keeps
private: the attention probabilities of every block, and a *token step* called between blocks that
may drop, merge or reorder tokens (token pruning, EViT, Patch Slimming, ToMe).

:class:`ViTConfig` is the model's shape and token mixer; the mixer of every block is built from it by
:mod:`vitsurvey.models.mixers` and handed to its :class:`~vitsurvey.models.layers.Block`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace

import torch
from torch import Tensor, nn

from ..checks import whole
from . import mixers
from .layers import Block

__all__ = ["PRESETS", "PatchEmbed", "TokenStep", "ViTConfig", "VisionTransformer", "init_weights", "require_plain"]

TokenStep = Callable[[int, Tensor, Tensor], Tensor]
"""``step(block_index, tokens, attn) -> tokens``: called after each block with that block's output
tokens ``(B, N, D)`` and its attention probabilities ``(B, heads, N, N)``. The class token is at
index 0 and must stay there."""


@dataclass(frozen=True)
class ViTConfig:
    """Shape of a plain ViT (pre-norm blocks, learned position embeddings), and its token mixer.

    The defaults are timm's ``VisionTransformer``: a class token read by the head, softmax attention in
    every block. ``class_token=False, global_pool="avg"`` averages the patch tokens instead (timm's
    option, and the pooling of Swin, PVT, PoolFormer and GFNet). ``mixer`` replaces softmax attention
    by another token mixer (:mod:`vitsurvey.models.mixers`); the one field named beside it in
    :data:`~vitsurvey.models.mixers.MIXERS` sets it, the others stay 0. :meth:`with_mixer` builds such a
    config from this one.
    """

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    mlp_ratio: float = 4.0
    class_token: bool = True
    global_pool: str = "token"
    mixer: str = "attention"
    window: int = 0
    features: int = 0
    rank: int = 0
    reduction: int = 0
    kernel: int = 0

    def __post_init__(self) -> None:
        for name in ("img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth", "num_heads"):
            whole(name, getattr(self, name), minimum=1)
        if not (isinstance(self.mlp_ratio, (int, float)) and math.isfinite(self.mlp_ratio) and self.mlp_ratio > 0):
            raise ValueError(f"mlp_ratio must be a positive number, not {self.mlp_ratio!r}.")
        if self.img_size % self.patch_size:
            raise ValueError(
                f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}; "
                "choose sizes so that the image splits into whole patches."
            )
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}."
            )
        if self.global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' (the class token) or 'avg' (mean of the patch tokens), "
                             f"not {self.global_pool!r}.")
        if self.global_pool == "token" and not self.class_token:
            raise ValueError("global_pool='token' reads the class token, but class_token=False: "
                             "use global_pool='avg' for a model without one.")
        mixers.check(self)

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @property
    def grid(self) -> int:
        """Patches along each side of the image."""
        return self.img_size // self.patch_size

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches: the class token, where there is one."""
        return int(self.class_token)

    @property
    def num_tokens(self) -> int:
        """Patches plus the class token, where there is one."""
        return self.num_patches + self.num_prefix_tokens

    def with_mixer(self, mixer: str, **setting: int) -> ViTConfig:
        """This config with another token mixer: ``setting`` is that mixer's one field (e.g.
        ``window=7``; ``kernel`` defaults to 3, ``features`` to 0), the other mixers' fields are reset,
        and a mixer that works on the patch grid gets average pooling and no class token."""
        if mixer not in mixers.MIXERS:
            raise ValueError(f"Unknown mixer {mixer!r}; choose one of {', '.join(mixers.MIXERS)}.")
        own = mixers.MIXERS[mixer]
        unknown = set(setting) - {own}
        if unknown:
            raise ValueError(f"mixer {mixer!r} takes {own or 'no setting'}, not {', '.join(sorted(unknown))}.")
        values = dict.fromkeys(mixers.SETTINGS, 0)
        if own == "kernel":
            values["kernel"] = 3
        values.update(setting)
        if mixer in mixers.GRID_MIXERS:
            values.update(class_token=False, global_pool="avg")
        return replace(self, mixer=mixer, **values)

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @classmethod
    def of(cls, model: nn.Module) -> ViTConfig | None:
        """The config of a plain ViT (ours or timm's: class token, no register or distillation
        tokens, standard blocks), or None for any other architecture."""
        if isinstance(model, VisionTransformer):  # None once pruning made the blocks differ from cfg
            cfg = model.cfg
            if model.num_prefix_tokens != cfg.num_prefix_tokens:  # e.g. a distillation token
                return None
            heads, width = cfg.num_heads, cfg.embed_dim // cfg.num_heads
            uniform = all(
                getattr(b.attn, "num_heads", heads) == heads and getattr(b.attn, "head_dim", width) == width
                and b.mlp.fc1.out_features == cfg.mlp_hidden for b in model.blocks
            )
            return cfg if uniform else None
        from timm.models.vision_transformer import Attention as TimmAttention
        from timm.models.vision_transformer import VisionTransformer as TimmViT

        if not isinstance(model, TimmViT) or getattr(model, "reg_token", None) is not None:
            return None
        class_token = model.cls_token is not None
        if model.num_prefix_tokens != int(class_token) or getattr(model, "no_embed_class", False):
            return None
        if model.global_pool not in ("token", "avg") or not isinstance(model.blocks[0].attn, TimmAttention):
            return None
        if (model.global_pool == "avg") == isinstance(model.fc_norm, nn.Identity):  # the final norm moves after pooling
            return None
        proj = model.patch_embed.proj
        if not isinstance(proj, nn.Conv2d) or not hasattr(model.blocks[0], "mlp"):
            return None
        fc1 = model.blocks[0].mlp.fc1
        return cls(
            img_size=model.patch_embed.img_size[0],
            patch_size=proj.kernel_size[0],
            in_chans=proj.in_channels,
            num_classes=model.num_classes,
            embed_dim=model.embed_dim,
            depth=len(model.blocks),
            num_heads=model.blocks[0].attn.num_heads,
            mlp_ratio=fc1.out_features / fc1.in_features,
            class_token=class_token,
            global_pool=model.global_pool,
        )

    def timm_kwargs(self) -> dict[str, object]:
        """Keyword arguments that make timm's ``VisionTransformer`` the same network (softmax attention only:
        timm's class has no other mixer)."""
        if self.mixer != "attention":
            raise ValueError(f"timm's VisionTransformer has no {self.mixer!r} mixer: only the default softmax "
                             "attention has a timm twin.")
        mixer_fields = {"mixer", *mixers.SETTINGS}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in mixer_fields}


# The three reference sizes of ViT / DeiT at 224 px (timm names).
PRESETS: dict[str, ViTConfig] = {
    "vit_tiny_patch16_224": ViTConfig(embed_dim=192, depth=12, num_heads=3),
    "vit_small_patch16_224": ViTConfig(embed_dim=384, depth=12, num_heads=6),
    "vit_base_patch16_224": ViTConfig(embed_dim=768, depth=12, num_heads=12),
}


class PatchEmbed(nn.Module):
    """Cut the image into p x p patches and project each linearly: a strided convolution does both."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.shape = (cfg.in_chans, cfg.img_size, cfg.img_size)
        self.proj = nn.Conv2d(
            cfg.in_chans, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size
        )

    def forward(self, x: Tensor) -> Tensor:
        # A strided convolution would silently drop the rows and columns of a larger image that do not fill a
        # patch, and the position embeddings only fit the configured grid: any other shape is an error.
        if x.dim() != 4 or tuple(x.shape[1:]) != self.shape:
            c, h, w = self.shape
            raise ValueError(f"This ViT takes a batch of images shaped (batch, {c}, {h}, {w}), got {tuple(x.shape)}"
                             + ("; add a batch dimension (x.unsqueeze(0))" if x.dim() == 3 else "")
                             + "; resize the images or build the model for their size (ViTConfig.img_size).")
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, D, h, w) -> (B, h*w, D)


class VisionTransformer(nn.Module):
    """ViT with class-token pooling; parameter names match timm's ``VisionTransformer``."""

    num_prefix_tokens: int
    """Tokens before the patches (the class token, where there is one); as timm names it."""

    def __init__(self, cfg: ViTConfig | None = None, **overrides: object) -> None:
        super().__init__()
        cfg = cfg or ViTConfig()
        if overrides:
            cfg = ViTConfig(**{**asdict(cfg), **overrides})  # type: ignore[arg-type]
        self.cfg = cfg
        self.num_prefix_tokens = cfg.num_prefix_tokens
        D = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D)) if cfg.class_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_tokens, D))
        self.blocks = nn.ModuleList(
            Block(D, cfg.num_heads, cfg.mlp_hidden, mixers.build(cfg, i)) for i in range(cfg.depth)
        )
        # As timm: with average pooling the final LayerNorm moves after the pooling (fc_norm).
        avg = cfg.global_pool == "avg"
        self.norm = nn.Identity() if avg else nn.LayerNorm(D, eps=1e-6)
        self.fc_norm = nn.LayerNorm(D, eps=1e-6) if avg else nn.Identity()
        self.head = nn.Linear(D, cfg.num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Truncated-normal weights (std 0.02) and zero biases, as ViT and DeiT train from scratch."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        init_weights(self)
        w = self.patch_embed.proj.weight
        nn.init.uniform_(w, -1 / math.sqrt(w[0].numel()), 1 / math.sqrt(w[0].numel()))

    def embed(self, x: Tensor) -> Tensor:
        """Image (B, C, H, W) -> tokens (B, prefix + patches, D), the class token (if any) first."""
        x = self.patch_embed(x)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x + self.pos_embed

    def forward_features(self, x: Tensor, token_step: TokenStep | None = None) -> Tensor:
        """Tokens after the final norm. With ``token_step``, attention is computed explicitly and the
        step may change the token set after each block."""
        x = self.embed(x)
        for i, block in enumerate(self.blocks):
            x, attn = block(x, need_weights=token_step is not None)
            if token_step is not None:
                assert attn is not None
                x = token_step(i, x, attn)
        return self.norm(x)

    def forward_head(self, x: Tensor) -> Tensor:
        if self.cfg.global_pool == "avg":
            return self.head(self.fc_norm(x[:, self.num_prefix_tokens:].mean(1)))
        return self.head(x[:, 0])

    def forward(self, x: Tensor, token_step: TokenStep | None = None) -> Tensor:
        return self.forward_head(self.forward_features(x, token_step))

    @torch.no_grad()
    def attention_maps(self, x: Tensor) -> list[Tensor]:
        """Attention probabilities of every block, each (B, heads, N, N)."""
        maps: list[Tensor] = []

        def record(i: int, tokens: Tensor, attn: Tensor) -> Tensor:
            maps.append(attn)
            return tokens

        self.forward_features(x, token_step=record)
        return maps

    def token_counts(self, x: Tensor, token_step: TokenStep) -> list[int]:
        """Tokens entering each block when ``token_step`` runs between blocks (first is 1 + patches)."""
        counts = [self.cfg.num_tokens]

        def count(i: int, tokens: Tensor, attn: Tensor) -> Tensor:
            out = token_step(i, tokens, attn)
            counts.append(out.shape[1])
            return out

        with torch.no_grad():
            self.forward_features(x, token_step=count)
        return counts[: self.cfg.depth]


def init_weights(module: nn.Module) -> None:
    """ViT's initialisation of every Linear (truncated normal, std 0.02; zero bias) and LayerNorm (1, 0) in
    ``module``: for the from-scratch ViT and for layers that wrappers add around it."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def require_plain(model: nn.Module, what: str) -> None:
    """Raise a TypeError unless ``model`` is vitsurvey's ViT, and a ValueError unless it has softmax attention
    in every block and a class token at index 0: what head pruning, token reduction and the distillation
    token are built on."""
    if not isinstance(model, VisionTransformer):
        raise TypeError(f"{what} works on vitsurvey's VisionTransformer, not on a {type(model).__name__}: apply it "
                        "to the plain model, before wrapping it (token merging, a token step, multiplexing, "
                        "simulated quantization).")
    cfg = model.cfg
    if cfg.mixer != "attention" or not cfg.class_token:
        found = f"mixer {cfg.mixer!r}" if cfg.mixer != "attention" else "no class token"
        raise ValueError(f"{what} needs softmax attention in every block and a class token; this model has {found}. "
                         "Use a config with the default mixer and class_token=True.")
