"""Comparing models honestly: the uncertainty of a measurement, Pareto fronts, the Efficient Error Rate.

* :class:`Spread` summarises repeated timings (median, interquartile range, extremes); a speed-up is
  called one only where its interquartile range excludes 1 (:meth:`Spread.verdict`).
* :func:`top1_se` is the standard error of an accuracy on a finite test set, and
  :func:`compare_top1` calls a difference under about two standard errors "within noise".
* Pareto fronts and the EER work on a table (a pandas DataFrame) with one row per model, so reported
  and measured numbers go through the same code.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = [
    "DIRECTIONS", "Spread", "compare_top1", "efficient_error_rate", "format_top1", "pareto_front",
    "speedup_phrase", "top1_se", "versus",
]

DIRECTIONS = ("min", "max")


# --------------------------------------------------------------------------- spread of repeated timings


@dataclass(frozen=True)
class Spread:
    """Median and spread of repeated measurements of one quantity (a rate, or a ratio of rates).

    The range (``low`` to ``high``) decides the verdict. It is the extremes over the rounds of one run,
    widened, where the machine's run-to-run variation has been measured, to at least ``between`` (a
    fraction) either side of the median. Rounds taken seconds apart share the machine's state of the
    moment, so their range is narrow; runs minutes apart do not: on a shared CPU the same comparison's
    median moved by several percent between runs whose within-run ranges were 1% wide
    (:func:`vitsurvey.measure.measure_rerun_floor` measures by how much, :func:`vitsurvey.measure.rerun_floor`
    reads it back). With ``between`` = 0 the range speaks for one run only, and :meth:`format` says so.
    The interquartile range (``q1`` to ``q3``, numpy's linear interpolation, over the rounds) stays
    available, and decides when :func:`vitsurvey.measure.relative_throughput` has enough rounds.
    """

    median: float
    q1: float
    q3: float
    low: float
    high: float
    n: int
    between: float = 0.0
    """Run-to-run variation folded into ``low`` and ``high``: a fraction of the median (0: none measured)."""

    @classmethod
    def of(cls, values: Iterable[float], between: float = 0.0) -> Spread:
        v = np.asarray([float(x) for x in values], dtype=float)
        if v.size == 0 or not np.isfinite(v).all():
            raise ValueError(f"A spread needs one or more finite values, got {v.tolist()}.")
        if not (math.isfinite(between) and 0.0 <= between < 1.0):
            raise ValueError(f"between is a fraction of the median in [0, 1), not {between}.")
        q1, med, q3 = np.percentile(v, [25, 50, 75])
        low = min(float(v.min()), float(med) * (1.0 - between))
        high = max(float(v.max()), float(med) * (1.0 + between))
        return cls(float(med), float(q1), float(q3), low, high, int(v.size), float(between))

    @property
    def relative_iqr(self) -> float:
        """Width of the interquartile range as a fraction of the median."""
        return (self.q3 - self.q1) / abs(self.median) if self.median else math.inf

    def excludes(self, value: float = 1.0) -> bool:
        """True when the whole range lies on one side of ``value``."""
        return self.low > value or self.high < value

    def verdict(self, value: float = 1.0) -> str:
        """For a ratio of rates: ``faster``, ``slower``, or ``within noise`` (the range includes ``value``)."""
        if not self.excludes(value):
            return "within noise"
        return "faster" if self.median > value else "slower"

    def format(self, digits: int = 2, unit: str = "") -> str:
        """``1.32x (range 1.22x-1.42x: 7 rounds, runs ±7.5%)``-style text, with ``unit`` after each number;
        ``one run`` in place of the run-to-run part where none was measured."""
        f = f"{{:.{digits}f}}{unit}"
        runs = f"runs ±{100 * self.between:.1f}%" if self.between else "one run"
        return f"{f.format(self.median)} (range {f.format(self.low)}-{f.format(self.high)}: {self.n} rounds, {runs})"


def speedup_phrase(spread: Spread, digits: int = 2) -> str:
    """A sentence fragment for a throughput ratio: '1.32x faster (IQR ...)' or 'within noise (...)'."""
    text = spread.format(digits, "x")
    verdict = spread.verdict()
    return f"{text}: within noise" if verdict == "within noise" else f"{text}, {verdict}"


# --------------------------------------------------------------------------- accuracy on a finite test set


def top1_se(top1: float, n: int) -> float:
    """Standard error, in percentage points, of a top-1 accuracy (in %) measured on ``n`` test images.

    Each test image is a Bernoulli trial, so the accuracy's standard error is sqrt(p (1 - p) / n). It
    measures the test set's sampling noise only, not the noise of training (seeds, data order).
    """
    if n <= 0:
        raise ValueError(f"A standard error needs a positive number of test images, not {n}.")
    if not 0.0 <= top1 <= 100.0:
        raise ValueError(f"top1 is a percentage between 0 and 100, not {top1}.")
    p = top1 / 100.0
    return 100.0 * math.sqrt(p * (1.0 - p) / n)


def format_top1(top1: float, n: int, digits: int = 2) -> str:
    """``87.84 ± 0.33%``: the accuracy with its standard error."""
    return f"{top1:.{digits}f} ± {top1_se(top1, n):.{digits}f}%"


def compare_top1(a: float, b: float, n: int, z: float = 2.0, n_b: int | None = None) -> str:
    """``higher``, ``lower`` or ``within noise``: accuracy ``a`` against ``b``, both measured on ``n`` images
    (or ``b`` on ``n_b``, e.g. two disjoint groups of test images).

    The two are treated as independent measurements, so the difference's standard error is
    sqrt(se_a^2 + se_b^2); a difference under ``z`` of those is within noise. (On one shared test set
    the two are positively correlated, so this errs towards "within noise".)
    """
    se = math.hypot(top1_se(a, n), top1_se(b, n if n_b is None else n_b))
    if abs(a - b) < z * se or (se == 0 and a == b):
        return "within noise"
    return "higher" if a > b else "lower"


def versus(a: float, b: float, n: int, name: str = "the control") -> str:
    """``within noise of the control`` or ``-2.31 points, lower than the control``: :func:`compare_top1` as text."""
    verdict = compare_top1(a, b, n)
    return f"within noise of {name}" if verdict == "within noise" else f"{a - b:+.2f} points, {verdict} than {name}"


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
    if any(not math.isfinite(w) or w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"EER weights must be finite, non-negative and not all zero, got {weights}.")
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
