"""Comparing models on several objectives at once: Pareto fronts and the Efficient Error Rate.

Both work on a table (a pandas DataFrame) with one row per model, so reported and measured numbers go
through the same code.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

DIRECTIONS = ("min", "max")


def _check_columns(frame: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KeyError(f"{what}: no column(s) {missing} in the table; it has {list(frame.columns)}.")


def pareto_front(frame: pd.DataFrame, objectives: Mapping[str, str]) -> pd.Series:
    """True for the rows that no other row dominates.

    ``objectives`` maps a column to ``"min"`` (lower is better: MACs, memory, error) or ``"max"``
    (higher is better: accuracy, throughput). Row *a* dominates row *b* when *a* is at least as good in
    every objective and strictly better in at least one. So identical rows never dominate each other
    (duplicates are all on the front or all off it), and a row that ties the best in one objective but
    is worse in another is off the front. Rows with a missing value in any objective are never on it.
    """
    if not objectives:
        raise ValueError("pareto_front needs at least one objective, e.g. {'top1': 'max', 'macs': 'min'}.")
    bad = {c: d for c, d in objectives.items() if d not in DIRECTIONS}
    if bad:
        raise ValueError(f"Objective directions must be 'min' or 'max', got {bad}.")
    columns = list(objectives)
    _check_columns(frame, columns, "pareto_front")
    values = frame[columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    signs = np.array([1.0 if objectives[c] == "min" else -1.0 for c in columns])
    cost = values * signs  # everything minimised from here on
    valid = ~np.isnan(cost).any(axis=1)
    on_front = np.zeros(len(frame), dtype=bool)
    candidates = cost[valid]
    for i in np.flatnonzero(valid):
        no_worse = (candidates <= cost[i]).all(axis=1)
        better = (candidates < cost[i]).any(axis=1)
        on_front[i] = not (no_worse & better).any()
    return pd.Series(on_front, index=frame.index, name="pareto")


def efficient_error_rate(
    frame: pd.DataFrame,
    costs: Mapping[str, float],
    error: str = "error",
    error_weight: float = 1.0,
    reference: str | object | Mapping[str, float] = "max",
) -> pd.Series:
    r"""The Efficient Error Rate (EER) after S2's description; lower is better.

    S2 (Papa et al., TPAMI 2024) introduces the EER to compare models by the features that cost
    hardware at inference (parameters, bits, FLOPs, model size) together with the error rate, each
    normalised. Its exact formula (normalisation, weights, sum or product) could not be obtained, so
    this is **our reading**, with every choice a parameter:

    .. math:: \mathrm{EER}(m) = \frac{\sum_k w_k\, x_k(m)/x_k^{\mathrm{ref}} + w_e\, e(m)/e^{\mathrm{ref}}}
                                       {\sum_k w_k + w_e}

    a weighted mean of ratios to a reference: ``costs`` maps each cost column to its weight
    :math:`w_k`, ``error`` names the error column (in % or as a fraction) with weight ``error_weight``.
    ``reference`` is ``"max"`` (each column's largest value in the table), ``"min"``, the index label
    of a reference row (e.g. the uncompressed baseline, whose EER is then exactly 1), or a mapping of
    column to reference value.

    Why a weighted mean of ratios: it never improves when a cost or the error grows (weights are
    non-negative), and dividing each column by a reference of the same units makes it independent of
    units (GMACs or MACs, MB or bytes), so rankings do not change with them.
    """
    weights = {**costs, error: error_weight}
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"EER weights must be non-negative and not all zero, got {weights}.")
    columns = list(weights)
    _check_columns(frame, columns, "efficient_error_rate")
    values = frame[columns].apply(pd.to_numeric, errors="coerce").astype(float)
    if (values < 0).any().any():
        raise ValueError("EER features must be non-negative (costs and error rates).")
    if isinstance(reference, Mapping):
        missing = [c for c in columns if c not in reference]
        if missing:
            raise KeyError(f"EER reference mapping lacks {missing}.")
        ref = pd.Series({c: float(reference[c]) for c in columns})
    elif reference == "max":
        ref = values.max()
    elif reference == "min":
        ref = values.min()
    elif reference in frame.index:
        ref = values.loc[reference]
    else:
        raise ValueError(
            f"EER reference must be 'max', 'min', a row label of the table or a mapping; got {reference!r}."
        )
    if (ref <= 0).any():
        zero = list(ref[ref <= 0].index)
        raise ValueError(f"EER reference is zero for {zero}: ratios to it are undefined; choose another reference.")
    ratios = values / ref
    w = pd.Series(weights)
    return (ratios * w).sum(axis=1, min_count=len(columns)) / w.sum()
