"""The token mixers and the analysis of trained attention, under the name the notebooks import.

The token mixers (softmax attention's cheaper stand-ins, their registry and analytic counts) live in
:mod:`vitsurvey.models.mixers`; how well they can stand in for a trained softmax attention (best low-rank
approximations, singular values, circulant share) is measured in :mod:`vitsurvey.studies.attention`. This
module re-exports the public names of both for ``from vitsurvey import mixers``; code inside the package
imports from those two homes.
"""

from __future__ import annotations

from .models import mixers as _mixers
from .models.layers import Attention
from .models.mixers import *  # noqa: F403  (the names the homes list in their __all__)
from .studies import attention as _attention
from .studies.attention import *  # noqa: F403

__all__ = sorted({"Attention", *_mixers.__all__, *_attention.__all__})
