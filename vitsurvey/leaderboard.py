"""The leaderboard of notebook 12, as ``from vitsurvey import leaderboard as lb`` and ``python -m vitsurvey
leaderboard`` read it.

The code lives in :mod:`vitsurvey.studies.leaderboard`; this module re-exports its names.
"""

from __future__ import annotations

from .studies.leaderboard import (COLUMNS, FRONTS, STEM, CompositionError, NoResults, Step, additivity, compose,
                                  describe_run, eer_ranking, eer_sensitivity, format_board, is_simulated,
                                  measure_models, model_bytes, orders, own_result, pareto_fronts, read, save,
                                  write_html)

__all__ = [
    "COLUMNS", "CompositionError", "FRONTS", "NoResults", "STEM", "Step", "additivity", "compose", "describe_run",
    "eer_ranking", "eer_sensitivity", "format_board", "is_simulated", "measure_models", "model_bytes", "orders",
    "own_result", "pareto_fronts", "read", "save", "write_html",
]
