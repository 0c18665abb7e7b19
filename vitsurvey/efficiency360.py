"""S1's "360" view of efficiency, as ``from vitsurvey import efficiency360 as e360`` reads it.

The code lives in :mod:`vitsurvey.studies.efficiency360`, one module per dimension (its docstring is the
map); this module re-exports its names so that ``e360.card(...)`` and the rest keep working.
"""

from __future__ import annotations

from .studies import efficiency360 as _home
from .studies.efficiency360 import *  # noqa: F403  (the names the home lists in its __all__)

__all__ = list(_home.__all__)
