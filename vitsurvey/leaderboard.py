"""The leaderboard of notebook 12, as ``from vitsurvey import leaderboard as lb`` and ``python -m vitsurvey
leaderboard`` read it.

The code lives in :mod:`vitsurvey.studies.leaderboard`; this module re-exports its names.
"""

from __future__ import annotations

from .studies import leaderboard as _home
from .studies.leaderboard import *  # noqa: F403  (the names the home lists in its __all__)

__all__ = list(_home.__all__)
