"""The one ViT, its token mixers, timm models, and their analytic sizes."""

from __future__ import annotations

from .counts import count_params, packed_weights, vit_macs, vit_params
from .vit import *  # noqa: F403
from .vit import (Attention, Block, Mlp, PatchEmbed, PRESETS, TokenStep, ViTConfig, VisionTransformer, create,
                  forward_bytes, init_weights, machine_memory_bytes, require_plain, small_resnet, timm_vit)
