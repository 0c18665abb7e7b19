"""Comparing models honestly: the uncertainty of a measurement, Pareto fronts, the Efficient Error Rate.

* :class:`Interval` summarises repeated timings (the median and a bootstrap confidence interval for it); a
  speed-up is called one only where its interval excludes 1 (:meth:`Interval.verdict`).
* :func:`top1_se` is the standard error of an accuracy on a finite test set. Two models scored on the same
  images are compared paired (:func:`paired_comparison`: a paired bootstrap interval and McNemar's exact test);
  several comparisons at once are adjusted (:func:`holm`); recipes trained with several seeds are compared over
  the seeds and the images together (:func:`seeded_comparison`; :func:`seed_table` for mean ± seed std).
  :func:`compare_top1` treats two accuracies as independent (for disjoint groups of images).
* Pareto fronts and the EER work on a table (a pandas DataFrame) with one row per model, so reported
  and measured numbers go through the same code.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "DIRECTIONS", "Interval", "Paired", "SeededPaired", "compare_top1", "efficient_error_rate", "format_top1",
    "holm", "paired_comparison", "pareto_front", "seed_table", "seeded_comparison", "speedup_phrase",
    "top1_se", "uncertain_front", "versus",
]

DIRECTIONS = ("min", "max")


# --------------------------------------------------------------------------- the uncertainty of repeated timings


@dataclass(frozen=True)
class Interval:
    """The median of repeated measurements of one quantity (a rate, or a ratio of rates) with a confidence
    interval for it.

    ``low`` to ``high`` is a percentile bootstrap interval of the median over the rounds (``level``, 95% by
    default): resample the rounds with replacement, take each resample's median, keep the middle ``level`` of
    those. It is what the verdict reads (:meth:`verdict`): a speed-up is "faster" only where the whole interval
    lies above 1. The bootstrap is seeded, so the same rounds always give the same interval. Why an interval
    of the median, not the extremes of the rounds: the extremes widen with every round added and one stalled
    round moves them, while the interval narrows as rounds are added and one stalled round barely moves it.
    ``minimum`` and ``maximum`` keep the extremes for tables that show them.

    ``resolution`` (a fraction of the median) is the instrument's resolution: the interval is never narrower
    than that either side of the median. Rounds within one run share what stays fixed during the run (where
    each copy of a model sits in memory, what another process is doing), so a run's bootstrap interval can be
    narrower than the spread between runs; :func:`vitsurvey.measure.relative_throughput` explains the default.
    """

    median: float
    low: float
    high: float
    n: int
    level: float = 0.95
    minimum: float = math.nan
    maximum: float = math.nan
    resolution: float = 0.0
    sampling_half_width: float = 0.0
    """The bootstrap interval's half-width before the resolution was applied, as a fraction of the median:
    what more rounds can still narrow."""

    @classmethod
    def of(cls, values: Iterable[float], level: float = 0.95, resolution: float = 0.0, resamples: int = 4000,
           seed: int = 0) -> Interval:
        v = np.asarray([float(x) for x in values], dtype=float)
        if v.size == 0 or not np.isfinite(v).all():
            raise ValueError(f"An interval needs one or more finite values, got {v.tolist()}.")
        if not 0.0 < level < 1.0:
            raise ValueError(f"level is a probability between 0 and 1 (e.g. 0.95), not {level}.")
        if not (math.isfinite(resolution) and 0.0 <= resolution < 1.0):
            raise ValueError(f"resolution is a fraction of the median in [0, 1), not {resolution}.")
        med = float(np.median(v))
        if v.size == 1:
            low = high = med
        else:
            rng = np.random.default_rng(seed)
            medians = np.median(v[rng.integers(0, v.size, size=(resamples, v.size))], axis=1)
            tail = (1.0 - level) / 2.0
            low, high = (float(x) for x in np.quantile(medians, [tail, 1.0 - tail]))
        sampling = (high - low) / 2.0 / abs(med) if med else math.inf
        low, high = min(low, med * (1.0 - resolution)), max(high, med * (1.0 + resolution))
        return cls(med, low, high, int(v.size), level, float(v.min()), float(v.max()), resolution, sampling)

    @property
    def half_width(self) -> float:
        """Half the interval's width as a fraction of the median: the smallest relative difference from the
        median that this run could tell apart from it."""
        return (self.high - self.low) / 2.0 / abs(self.median) if self.median else math.inf

    @property
    def detectable(self) -> float:
        """The smallest relative difference this run would detect with 80% power: a true difference of
        (z_0.975 + z_0.8) standard errors separates from 1 four times in five, and the interval's half-width
        is z_0.975 of them (a normal approximation to the bootstrap)."""
        return self.half_width * (1.959964 + 0.841621) / 1.959964

    def excludes(self, value: float = 1.0) -> bool:
        """True when the whole interval lies on one side of ``value``."""
        return self.low > value or self.high < value

    def verdict(self, value: float = 1.0) -> str:
        """For a ratio of rates: ``faster``, ``slower``, or ``within noise`` (the interval includes ``value``)."""
        if not self.excludes(value):
            return "within noise"
        return "faster" if self.median > value else "slower"

    def format(self, digits: int = 2, unit: str = "") -> str:
        """``1.32x (95% CI 1.22x-1.42x, 9 rounds)``-style text, with ``unit`` after each number."""
        f = f"{{:.{digits}f}}{unit}"
        return (f"{f.format(self.median)} ({100 * self.level:.0f}% CI {f.format(self.low)}-{f.format(self.high)}, "
                f"{self.n} rounds)")


def speedup_phrase(interval: Interval, digits: int = 2) -> str:
    """A sentence fragment for a throughput ratio: ``1.32x faster (95% CI ...)``, or, where the interval includes
    1, ``inconclusive at this precision`` with the interval and the smallest change this run could have seen."""
    text = interval.format(digits, "x")
    verdict = interval.verdict()
    if verdict == "within noise":
        return (f"inconclusive at this precision: {text}; this run could detect a difference of about "
                f"{100 * interval.detectable:.0f}% or more (80% power)")
    return f"{text}, {verdict}"


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


# --------------------------------------------------------------------------- two classifiers on the same test images


def _phrase(comparison: Any, name: str, alpha: float, who: str) -> str:
    """A comparison's verdict as text: ``higher than NAME: ...``, or, where it cannot separate the two, ``inconclusive
    at this precision against NAME: ...; WHO could detect about X points (80% power)``."""
    verdict = comparison.verdict(alpha)
    if verdict == "within noise":
        return (f"inconclusive at this precision against {name}: {comparison.format()}; {who} could detect about "
                f"{comparison.detectable:.2f} points (80% power)")
    return f"{verdict} than {name}: {comparison.format()}"


@dataclass(frozen=True)
class Paired:
    """Two classifiers compared on the same test images: the accuracy difference ``a - b`` (percentage points) with a
    paired bootstrap interval, and McNemar's exact test on the images where exactly one of them is right.

    Why paired: both models meet the same images, so their errors are correlated (most images are easy for both).
    Treating the two accuracies as independent overstates the noise of their difference; only the discordant
    images (``a_only`` right only for ``a``, ``b_only`` only for ``b``) carry information about which is better.
    Under "no difference" each discordant image is a fair coin, so McNemar's exact test is a binomial test on them
    (:func:`scipy.stats.binomtest`). The verdict follows the test at ``alpha``; the interval gives the size.
    """

    difference: float
    low: float
    high: float
    p_value: float
    n: int
    a_only: int
    b_only: int
    level: float = 0.95

    @property
    def se(self) -> float:
        """Standard error of the difference (points), from the discordant share: sqrt(d / n - (a - b)^2 / n^2) / sqrt(n)."""
        d = (self.a_only + self.b_only) / self.n
        delta = (self.a_only - self.b_only) / self.n
        return 100.0 * math.sqrt(max(d - delta**2, 0.0) / self.n)

    @property
    def detectable(self) -> float:
        """The smallest difference (points) this test set would detect with 80% power at the 5% level, given the
        discordant share measured here: (z_0.975 + z_0.8) standard errors, and never less than 6 images' worth,
        since McNemar's exact test cannot reject at 5% with fewer than 6 discordant images (2 / 2^6 = 0.031)."""
        return max((1.959964 + 0.841621) * self.se, 100.0 * 6 / self.n)

    def verdict(self, alpha: float = 0.05) -> str:
        """``higher`` or ``lower`` (``a`` against ``b``) where McNemar's test rejects "no difference" at ``alpha``,
        else ``within noise``."""
        if self.p_value >= alpha or self.a_only == self.b_only:
            return "within noise"
        return "higher" if self.a_only > self.b_only else "lower"

    def format(self, digits: int = 2) -> str:
        """``+1.20 points (95% CI +0.40 to +2.00; McNemar p = 0.004, 10,000 paired images)``."""
        return (f"{self.difference:+.{digits}f} points ({100 * self.level:.0f}% CI {self.low:+.{digits}f} to "
                f"{self.high:+.{digits}f}; McNemar p = {self.p_value:.3g}, {self.n:,} paired images)")

    def phrase(self, name: str = "the control", alpha: float = 0.05) -> str:
        """``higher than the control: +1.20 points (...)`` or ``inconclusive at this precision against the control:
        ...; this test set could detect about 1.1 points (80% power)``."""
        return _phrase(self, name, alpha, "this test set")


def _correct(predictions: Iterable, labels: Iterable | None) -> np.ndarray:
    p = np.asarray(list(predictions) if not hasattr(predictions, "__array__") else predictions)
    if labels is None:
        if p.dtype != bool:
            raise ValueError("Without labels, pass whether each image was classified correctly (booleans).")
        return p.reshape(-1)
    y = np.asarray(list(labels) if not hasattr(labels, "__array__") else labels)
    if p.shape != y.shape:
        raise ValueError(f"predictions {p.shape} and labels {y.shape} must have one entry per test image.")
    return (p == y).reshape(-1)


def paired_comparison(a: Iterable, b: Iterable, labels: Iterable | None = None, level: float = 0.95,
                      resamples: int = 4000, seed: int = 0) -> Paired:
    """Compare classifier ``a`` with ``b`` on the same test images: ``a`` and ``b`` are their predicted classes
    (with ``labels``) or whether each image was right (booleans, without ``labels``), in the same image order.
    Returns the difference in top-1 with a paired bootstrap interval (images resampled with replacement, both
    models' results kept together) and McNemar's exact test (:class:`Paired`)."""
    from scipy.stats import binomtest

    ca, cb = _correct(a, labels), _correct(b, labels)
    if ca.shape != cb.shape:
        raise ValueError(f"a and b must be scored on the same images: {ca.size} against {cb.size} results.")
    if ca.size == 0:
        raise ValueError("No test images: a paired comparison needs at least one image both models classified.")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level is a probability between 0 and 1 (e.g. 0.95), not {level}.")
    n = int(ca.size)
    a_only, b_only = int((ca & ~cb).sum()), int((~ca & cb).sum())
    diff = 100.0 * (ca.astype(float) - cb.astype(float))
    rng = np.random.default_rng(seed)
    means = np.array([diff[rng.integers(0, n, n)].mean() for _ in range(resamples)])
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    p = 1.0 if a_only + b_only == 0 else float(binomtest(a_only, a_only + b_only, 0.5).pvalue)
    return Paired(float(diff.mean()), float(low), float(high), p, n, a_only, b_only, level)


def holm(p_values: Mapping[str, float] | Iterable[float]) -> Any:
    """Holm's step-down adjustment of several p-values tested together (e.g. every student against the no-teacher
    control, when the notebook then names the best): adjusted p-values in the same order (a dict for a dict).
    Why: picking the best of k comparisons and testing it as if chosen in advance finds a "winner" by chance far
    more often than 5%; Holm's adjustment keeps that family-wise error at the level asked for, without assuming the
    tests are independent."""
    keys = list(p_values) if isinstance(p_values, Mapping) else None
    values = np.asarray([p_values[k] for k in keys] if keys is not None else list(p_values), dtype=float)
    if values.size and (np.isnan(values).any() or (values < 0).any() or (values > 1).any()):
        raise ValueError(f"p-values lie between 0 and 1, got {values.tolist()}.")
    order = np.argsort(values, kind="stable")
    adjusted = np.empty_like(values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (values.size - rank) * values[i]))
        adjusted[i] = running
    return dict(zip(keys, adjusted.tolist())) if keys is not None else adjusted.tolist()


@dataclass(frozen=True)
class SeededPaired:
    """Two recipes, each trained with the same ``k`` seeds, every model scored on the same ``n`` test images: the mean
    accuracy difference ``a - b`` (points) over the seeds, with an interval that holds both kinds of noise.

    Why both: a trained model's accuracy varies with its seed (initialisation, data order), and the test set is one
    sample of images. The seeds' part is the spread of the per-seed differences (``seed_std / sqrt(k)``); the images'
    part is the paired standard error of the seed-averaged difference image by image (images whose outcome differs
    between the two recipes carry it). The two add as variances, and the interval uses Student's t with the
    Welch-Satterthwaite degrees of freedom, so three seeds give the wide interval three seeds deserve, and a run whose
    seeds agree is limited by its test images instead. With one seed the seed part cannot be measured: the interval
    is the test set's alone and :meth:`phrase` says so.
    """

    difference: float
    low: float
    high: float
    p_value: float
    n: int
    k: int
    seed_se: float
    """The seeds' part of the standard error (points); NaN with one seed."""
    image_se: float
    """The test images' part of the standard error (points)."""
    df: float
    per_seed: tuple[float, ...]
    """Each seed's difference ``a - b`` (points), in the seeds' order."""
    level: float = 0.95

    @property
    def se(self) -> float:
        """The standard error of the mean difference (points): seeds and images together."""
        return math.hypot(0.0 if math.isnan(self.seed_se) else self.seed_se, self.image_se)

    @property
    def seed_std(self) -> float:
        """The standard deviation of the per-seed differences (points); NaN with one seed."""
        return self.seed_se * math.sqrt(self.k) if self.k > 1 else math.nan

    @property
    def detectable(self) -> float:
        """The smallest difference (points) this run would detect with 80% power at the 5% level, given the noise
        measured here: (t_0.975 + t_0.8) standard errors at the interval's degrees of freedom, and never less than one
        test image's worth."""
        from scipy.stats import t

        return max((float(t.ppf(0.975, self.df)) + float(t.ppf(0.8, self.df))) * self.se, 100.0 / self.n)

    def verdict(self, alpha: float = 0.05) -> str:
        """``higher`` or ``lower`` (``a`` against ``b``) where the test rejects "no difference" at ``alpha``, else
        ``within noise``."""
        if self.p_value >= alpha or self.difference == 0:
            return "within noise"
        return "higher" if self.difference > 0 else "lower"

    def format(self, digits: int = 2) -> str:
        """``+1.20 points (95% CI +0.40 to +2.00; p = 0.004; 3 seeds, seed std 0.30; 10,000 paired images)``."""
        seeds = (f"{self.k} seeds, seed std {self.seed_std:.{digits}f}" if self.k > 1
                 else "1 seed, seed noise not measured")
        return (f"{self.difference:+.{digits}f} points ({100 * self.level:.0f}% CI {self.low:+.{digits}f} to "
                f"{self.high:+.{digits}f}; p = {self.p_value:.3g}; {seeds}; {self.n:,} paired images)")

    def phrase(self, name: str = "the control", alpha: float = 0.05) -> str:
        """``higher than the control: ...`` or ``inconclusive at this precision against the control: ...; this run
        could detect about 1.1 points (80% power)``."""
        return _phrase(self, name, alpha, "this run")


def _correct_by_seed(predictions: Any, labels: Iterable | None) -> np.ndarray:
    """Whether each seed's model got each image right: a (seeds, images) array."""
    rows = [predictions] if np.ndim(np.asarray(predictions[0] if len(predictions) else [])) == 0 else predictions
    return np.stack([_correct(r, labels) for r in rows]) if len(rows) else np.zeros((0, 0), dtype=bool)


def seeded_comparison(a: Any, b: Any, labels: Iterable | None = None, level: float = 0.95) -> SeededPaired:
    """Compare recipe ``a`` with ``b``: each is a sequence with one entry per training seed (the same seeds, in the same
    order), every entry the predicted classes on the same test images (with ``labels``) or whether each image was
    right (booleans, without ``labels``). A single 1-D entry counts as one seed. Returns the mean difference in top-1
    with an interval over seeds and images together (:class:`SeededPaired`).

    The p-value is Student's t on the mean difference with the Welch-Satterthwaite degrees of freedom of the two
    variance parts: ``df = V^2 / ((s^2/k)^2/(k-1) + (v/n)^2/(n-1))`` with ``V = s^2/k + v/n``, where ``s`` is the
    per-seed differences' standard deviation and ``v`` the variance over images of the seed-averaged difference."""
    from scipy.stats import t

    ca, cb = _correct_by_seed(a, labels), _correct_by_seed(b, labels)
    if ca.shape != cb.shape:
        raise ValueError(f"a and b need one result per seed (the same seeds) on the same test images: {ca.shape[0]} "
                         f"seed(s) x {ca.shape[1]} images against {cb.shape[0]} x {cb.shape[1]}.")
    k, n = ca.shape
    if k == 0 or n == 0:
        raise ValueError("A seeded comparison needs at least one seed and one test image both recipes classified.")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level is a probability between 0 and 1 (e.g. 0.95), not {level}.")
    diff = 100.0 * (ca.astype(float) - cb.astype(float))  # (seeds, images)
    per_seed = diff.mean(axis=1)
    mean = float(per_seed.mean())
    image_var = float(diff.mean(axis=0).var(ddof=1)) / n if n > 1 else 0.0
    seed_var = float(per_seed.var(ddof=1)) / k if k > 1 else math.nan
    total = image_var + (0.0 if k == 1 else seed_var)
    parts = (0.0 if k == 1 else seed_var**2 / (k - 1)) + (image_var**2 / (n - 1) if n > 1 else 0.0)
    df = total**2 / parts if parts > 0 else float(max(k - 1, 1))
    se = math.sqrt(total)
    if se == 0.0:
        p_value = 1.0 if mean == 0 else 0.0
        low = high = mean
    else:
        p_value = float(2.0 * t.sf(abs(mean) / se, df))
        half = float(t.ppf(0.5 + level / 2, df)) * se
        low, high = max(mean - half, -100.0), min(mean + half, 100.0)  # a difference of accuracies lies in +-100
    return SeededPaired(mean, low, high, p_value, n, k, math.sqrt(seed_var) if k > 1 else math.nan,
                        math.sqrt(image_var), df, tuple(float(x) for x in per_seed), level)


def seed_table(frame: pd.DataFrame, by: str | list[str] = "model", value: str = "top1") -> pd.DataFrame:
    """One row per model from one row per (model, seed): ``value`` as the mean over seeds, ``value + " seed std"``
    and ``seeds`` (how many), in the models' first-seen order. What every table of trained models shows."""
    _check_columns(frame, [*([by] if isinstance(by, str) else by), value], "seed_table")
    grouped = frame.groupby(by, sort=False)[value]
    return pd.DataFrame({value: grouped.mean(), f"{value} seed std": grouped.std(ddof=1), "seeds": grouped.size()})


def _check_columns(frame: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KeyError(f"{what}: no column(s) {missing} in the table; it has {list(frame.columns)}.")


def _numbers(frame: pd.DataFrame, columns: list[str], what: str, finite: bool = False) -> pd.DataFrame:
    """``frame[columns]`` as floats, a missing value (None, NaN, an empty string) as NaN. A value that is not a
    number (a string such as "abc", which would otherwise count as missing) raises ValueError naming its column and
    row, and so does an infinity where ``finite``: a cost of inf makes every finite cost's ratio to it 0."""
    values = frame[columns].apply(pd.to_numeric, errors="coerce").astype(float)
    for c in columns:
        given = frame[c]
        blank = given.isna() | given.astype(str).str.strip().isin(["", "<NA>"])
        bad = values[c].isna() & ~blank
        if bad.any():
            label = bad.idxmax()
            raise ValueError(f"{what}: column {c!r} holds {given[label]!r} (row {label!r}), which is not a number.")
        if finite and np.isinf(values[c]).any():
            label = np.isinf(values[c]).idxmax()
            raise ValueError(f"{what}: column {c!r} holds {values[c][label]} (row {label!r}); every value must be "
                             "finite (a missing one may be left empty).")
    return values


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
    values = _numbers(frame, columns, "pareto_front").to_numpy(dtype=float)
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


def uncertain_front(frame: pd.DataFrame, objectives: Mapping[str, str],
                    intervals: Mapping[str, tuple[str, str]]) -> pd.Series:
    """True for the members of :func:`pareto_front` (computed on the medians) whose place on it the intervals do
    not settle.

    ``intervals`` maps an objective to the columns of its interval's bounds, e.g. ``{"speedup": ("speedup_low",
    "speedup_high")}``. Two rows are *indistinct* on such an objective when their intervals overlap: the measurement
    cannot order them there. A member is uncertain when, for some other row, every objective either has overlapping
    intervals or (without an interval) does not favour the member over the other row by more than it favours the
    other, in the sense that:

    * the member dominates the other row only by amounts inside the intervals (the other row might belong on the
      front too), or
    * the other row is at least as good in every objective without an interval, and indistinct in those with one:
      with the intervals' uncertainty the other row could dominate the member, which would then be off the front.
    """
    front = pareto_front(frame, objectives)
    unknown = [c for c in intervals if c not in objectives]
    if unknown:
        raise ValueError(f"intervals name columns that are not objectives: {unknown}.")
    for low, high in intervals.values():
        _check_columns(frame, [low, high], "uncertain_front")
    columns = list(objectives)
    values = frame[columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    signs = np.array([1.0 if objectives[c] == "min" else -1.0 for c in columns])
    cost = values * signs
    bounds = {c: frame[list(b)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
              for c, b in intervals.items()}
    exact = [k for k, c in enumerate(columns) if c not in intervals]
    uncertain = np.zeros(len(frame), dtype=bool)
    if not intervals:
        return pd.Series(uncertain, index=frame.index, name="uncertain")
    for i in np.flatnonzero(front.to_numpy()):
        for j in range(len(frame)):
            if j == i or np.isnan(cost[j]).any():
                continue
            indistinct = all(bounds[c][i, 0] <= bounds[c][j, 1] and bounds[c][j, 0] <= bounds[c][i, 1]
                             for c in intervals)
            if not indistinct:
                continue
            dominates = (cost[i] <= cost[j]).all() and (cost[i] < cost[j]).any()
            could_be_dominated = all(cost[j, k] <= cost[i, k] for k in exact)
            if dominates or could_be_dominated:
                uncertain[i] = True
                break
    return pd.Series(uncertain, index=frame.index, name="uncertain")


def efficient_error_rate(
    frame: pd.DataFrame,
    costs: Mapping[str, float],
    error: str = "error",
    error_weight: float = 1.0,
    reference: str | object | Mapping[str, float] = "max",
    form: str = "arithmetic",
) -> pd.Series:
    r"""The Efficient Error Rate (EER) after S2's description; lower is better.

    S2 (Papa et al., TPAMI 2024) introduces the EER to compare models by the features that cost
    hardware at inference (parameters, bits, FLOPs, model size) together with the error rate, each
    normalised. Its exact formula (normalisation, weights, sum or product) could not be obtained, so
    this is **our reading**, with every choice a parameter:

    .. math:: \mathrm{EER}(m) = \frac{\sum_k w_k\, x_k(m)/x_k^{\mathrm{ref}} + w_e\, e(m)/e^{\mathrm{ref}}}
                                       {\sum_k w_k + w_e}

    a weighted (arithmetic) mean of ratios to a reference: ``costs`` maps each cost column to its weight
    :math:`w_k`, ``error`` names the error column (in % or as a fraction) with weight ``error_weight``.
    ``reference`` is ``"max"`` (each column's largest value in the table), ``"min"``, the index label
    of a reference row (e.g. the uncompressed baseline, whose EER is then exactly 1), or a mapping of
    column to reference value.

    Why a weighted mean of ratios: it never improves when a cost or the error grows (weights are
    non-negative), and dividing each column by a reference of the same units makes it independent of
    units (GMACs or MACs, MB or bytes), so rankings do not change with them.

    ``form="geometric"``: the weighted geometric mean of the same ratios,

    .. math:: \mathrm{EER}_g(m) = \prod_k \bigl(x_k(m)/x_k^{\mathrm{ref}}\bigr)^{w_k / \sum_j w_j},

    whose logarithm is a weighted sum of log x_k(m) minus a constant that only the reference sets: the ranking it
    gives does not depend on the reference at all (the arithmetic form's ranking does), and halving a cost counts
    the same whatever the cost's size. It needs every value positive.
    """
    if form not in ("arithmetic", "geometric"):
        raise ValueError(f"form is 'arithmetic' or 'geometric', not {form!r}.")
    weights = {**costs, error: error_weight}
    if any(not math.isfinite(w) or w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"EER weights must be finite, non-negative and not all zero, got {weights}.")
    columns = list(weights)
    _check_columns(frame, columns, "efficient_error_rate")
    values = _numbers(frame, columns, "efficient_error_rate", finite=True)
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
    if not np.isfinite(ref.to_numpy(dtype=float)).all():
        raise ValueError(f"EER reference is not a finite number for {list(ref[~np.isfinite(ref.astype(float))].index)} "
                         f"({ref.to_dict()}); give finite references (a column with no values has none).")
    if (ref <= 0).any():
        zero = list(ref[ref <= 0].index)
        raise ValueError(f"EER reference is zero for {zero}: ratios to it are undefined; choose another reference.")
    ratios = values / ref
    w = pd.Series(weights)
    if form == "geometric":
        used = [c for c in columns if weights[c] > 0]
        if (values[used] <= 0).any().any():
            raise ValueError(f"The geometric EER needs every weighted value positive (a zero has no logarithm); "
                             f"{used} hold zeros. Use form='arithmetic' or drop the column.")
        return np.exp((np.log(ratios[used]) * w[used]).sum(axis=1, min_count=len(used)) / w.sum())
    return (ratios * w).sum(axis=1, min_count=len(columns)) / w.sum()
