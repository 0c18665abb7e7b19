"""The one Vision Transformer, its token mixers, timm models, and their sizes.

Modules, bottom to top (each imports only those above it in this list):

* :mod:`~vitsurvey.models.layers` -- softmax :class:`Attention`, :class:`Mlp`, the pre-norm :class:`Block`, and
  the one split of a fused projection into per-head queries, keys and values;
* :mod:`~vitsurvey.models.mixers` -- the token mixers that can replace softmax attention (window, linear,
  low-rank, spatial reduction, pooling, Fourier, convolution), each filed in one registry with its own
  config check, MACs, parameters and crossover with attention;
* :mod:`~vitsurvey.models.vit` -- :class:`ViTConfig`, :data:`PRESETS` and the from-scratch
  :class:`VisionTransformer` (timm's parameter names, attention maps, token steps);
* :mod:`~vitsurvey.models.counts` -- parameters counted on a built model, and the analytic parameters and
  MACs of a ViT from its config;
* :mod:`~vitsurvey.models.zoo` -- any timm model by name (:func:`create`), timm's own ViT of a config
  (:func:`timm_vit`), the small ResNet teacher, and the memory check that refuses sizes that cannot fit.

Every public name of these modules but the mixers' is importable from here.
"""

from __future__ import annotations

from .counts import count_params, nonzero_params, packed_weights, vit_macs, vit_params
from .layers import Attention, Block, Mlp, TokenMixer, merge_heads, split_qkv
from .vit import PRESETS, PatchEmbed, TokenStep, ViTConfig, VisionTransformer, init_weights, require_plain
from .zoo import create, forward_bytes, small_resnet, timm_vit

__all__ = [
    "Attention", "Block", "Mlp", "PRESETS", "PatchEmbed", "TokenMixer", "TokenStep", "ViTConfig",
    "VisionTransformer", "count_params", "create", "forward_bytes", "init_weights",
    "merge_heads", "nonzero_params", "packed_weights", "require_plain", "small_resnet", "split_qkv", "timm_vit",
    "vit_macs", "vit_params",
]
