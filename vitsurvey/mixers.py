"""The token mixers and the analysis of trained attention, under the name the notebooks import.

The token mixers (softmax attention's cheaper stand-ins, their registry and analytic counts) live in
:mod:`vitsurvey.models.mixers`; how well they can stand in for a trained softmax attention (best low-rank
approximations, singular values, circulant share) is measured in :mod:`vitsurvey.studies.attention`. This
module re-exports the public names of both for ``from vitsurvey import mixers``; code inside the package
imports from those two homes.
"""

from __future__ import annotations

from .models.layers import Attention
from .models.mixers import (GRID_MIXERS, MIXERS, REGISTRY, RFFT_MACS_PER_POINT_LOG2, SETTINGS, ConvMixer,
                            FourierMixer, LinearAttention, LowRankAttention, PoolMixer, SpatialReductionAttention,
                            WindowAttention, build, check, crossover_tokens, macs, orthogonal_gaussian, params,
                            register, rfft_macs, unregister)
from .studies.attention import (RankTruncatedAttention, best_low_rank, circulant_projection, circulant_share,
                                singular_values, truncate_attention)

__all__ = [
    "Attention", "ConvMixer", "FourierMixer", "GRID_MIXERS", "LinearAttention", "LowRankAttention", "MIXERS",
    "PoolMixer", "REGISTRY", "RFFT_MACS_PER_POINT_LOG2", "RankTruncatedAttention", "SETTINGS",
    "SpatialReductionAttention", "WindowAttention", "best_low_rank", "build", "check", "circulant_projection",
    "circulant_share", "crossover_tokens", "macs", "orthogonal_gaussian", "params", "register", "rfft_macs",
    "singular_values", "truncate_attention", "unregister",
]
