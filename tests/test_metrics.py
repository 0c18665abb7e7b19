import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vitsurvey import metrics
from vitsurvey.metrics import efficient_error_rate, pareto_front


def _front(rows, objectives):
    return pareto_front(pd.DataFrame(rows), objectives).tolist()


def test_pareto_simple_trade_off():
    rows = {"top1": [80, 75, 70, 79], "macs": [4, 2, 1, 5]}
    # the last row is worse than the first in both objectives
    assert _front(rows, {"top1": "max", "macs": "min"}) == [True, True, True, False]


def test_pareto_ties_and_duplicates():
    rows = {"top1": [80, 80, 80, 70], "macs": [2, 2, 3, 1]}
    # two identical rows: neither dominates the other, both stay; a tie in top1 with more MACs is off
    assert _front(rows, {"top1": "max", "macs": "min"}) == [True, True, False, True]


def test_pareto_single_objective_keeps_all_best():
    assert _front({"x": [3, 1, 1, 2]}, {"x": "min"}) == [False, True, True, False]


def test_pareto_missing_values_are_off_the_front():
    rows = {"top1": [80, np.nan, 70], "macs": [2, 0.1, 1]}
    assert _front(rows, {"top1": "max", "macs": "min"}) == [True, False, True]


def test_a_front_member_that_dominates_only_within_the_intervals_is_uncertain():
    frame = pd.DataFrame({"top1": [80.0, 79.0, 70.0], "speed": [1.10, 1.05, 0.50],
                          "low": [1.00, 0.98, 0.45], "high": [1.20, 1.12, 0.55]}, index=["a", "b", "c"])
    objectives = {"top1": "max", "speed": "max"}
    assert pareto_front(frame, objectives).tolist() == [True, False, False]  # on the medians a dominates b and c
    uncertain = metrics.uncertain_front(frame, objectives, {"speed": ("low", "high")})
    assert uncertain.tolist() == [True, False, False]  # a's speed interval overlaps b's: b may belong on it
    apart = frame.assign(low=[1.15, 0.98, 0.45])
    assert not metrics.uncertain_front(apart, objectives, {"speed": ("low", "high")}).any()
    # d is on the front only because its median speed beats e's, which is more accurate; their intervals overlap,
    # so e might be at least as fast and d then dominated: d is uncertain too
    pair = pd.DataFrame({"top1": [80.0, 81.0], "speed": [1.20, 1.10], "low": [1.05, 0.95], "high": [1.35, 1.25]},
                        index=["d", "e"])
    assert pareto_front(pair, objectives).tolist() == [True, True]
    assert metrics.uncertain_front(pair, objectives, {"speed": ("low", "high")}).tolist() == [True, False]
    with pytest.raises(ValueError, match="not objectives"):
        metrics.uncertain_front(frame, objectives, {"macs": ("low", "high")})


def test_pareto_bad_input():
    frame = pd.DataFrame({"a": [1]})
    with pytest.raises(ValueError, match="at least one objective"):
        pareto_front(frame, {})
    with pytest.raises(ValueError, match="'min' or 'max'"):
        pareto_front(frame, {"a": "lower"})
    with pytest.raises(KeyError, match="no column"):
        pareto_front(frame, {"b": "min"})


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), min_size=1, max_size=12))
def test_pareto_front_is_exactly_the_non_dominated_set(points):
    frame = pd.DataFrame(points, columns=["a", "b"])
    front = pareto_front(frame, {"a": "min", "b": "max"})
    for i, (a, b) in enumerate(points):
        dominated = any(a2 <= a and b2 >= b and (a2 < a or b2 > b) for a2, b2 in points)
        assert front.iloc[i] == (not dominated)
    assert front.any()  # a finite set always has a non-dominated point


TABLE = pd.DataFrame(
    {"params": [5.7, 22.0, 86.6], "macs": [1.26, 4.6, 17.6], "bits": [32, 8, 8], "error": [27.8, 20.2, 18.2]},
    index=["ti", "s", "b"],
)
COSTS = {"params": 1.0, "macs": 1.0, "bits": 1.0}


def test_eer_of_the_reference_row_is_one():
    eer = efficient_error_rate(TABLE, COSTS, reference="b")
    assert eer["b"] == pytest.approx(1.0)
    # ViT-Ti at 32 bit against ViT-B at 8 bit: the bit width outweighs its smaller size
    assert eer["ti"] == pytest.approx((5.7 / 86.6 + 1.26 / 17.6 + 32 / 8 + 27.8 / 18.2) / 4)


def test_eer_explicit_formula():
    eer = efficient_error_rate(TABLE, {"macs": 2.0}, error_weight=1.0, reference={"macs": 10.0, "error": 20.0})
    assert eer["ti"] == pytest.approx((2 * 1.26 / 10 + 27.8 / 20) / 3)


def test_eer_bad_input():
    with pytest.raises(ValueError, match="non-negative"):
        efficient_error_rate(TABLE, {"macs": -1.0})
    with pytest.raises(ValueError, match="reference"):
        efficient_error_rate(TABLE, COSTS, reference="nope")
    with pytest.raises(KeyError, match="no column"):
        efficient_error_rate(TABLE, {"latency": 1.0})
    with pytest.raises(ValueError, match="zero"):
        efficient_error_rate(TABLE.assign(bits=0), COSTS)


def test_geometric_eer_is_the_weighted_geometric_mean_and_ignores_the_reference_in_ranking():
    eer = efficient_error_rate(TABLE, COSTS, reference="b", form="geometric")
    assert eer["b"] == pytest.approx(1.0)
    assert eer["ti"] == pytest.approx((5.7 / 86.6 * 1.26 / 17.6 * 32 / 8 * 27.8 / 18.2) ** (1 / 4))
    weighted = efficient_error_rate(TABLE, {"macs": 3.0}, reference="s", form="geometric")
    assert weighted["b"] == pytest.approx((17.6 / 4.6) ** 0.75 * (18.2 / 20.2) ** 0.25)
    for ref in ("ti", "s", "b", "max", "min"):  # every reference: the same order
        ranks = efficient_error_rate(TABLE, COSTS, reference=ref, form="geometric").rank()
        assert ranks.tolist() == eer.rank().tolist()
    with pytest.raises(ValueError, match="positive"):
        efficient_error_rate(TABLE.assign(error=[0.0, 20.2, 18.2]), COSTS, reference="b", form="geometric")
    with pytest.raises(ValueError, match="form"):
        efficient_error_rate(TABLE, COSTS, form="harmonic")


positive = st.floats(0.01, 1000, allow_nan=False)
table = st.lists(st.tuples(positive, positive, positive), min_size=2, max_size=8).map(
    lambda rows: pd.DataFrame(rows, columns=["macs", "params", "error"])
)


@settings(max_examples=80, deadline=None)
@given(table, st.integers(0, 7), st.sampled_from(["macs", "params", "error"]), st.floats(1.0, 10.0),
       st.sampled_from(["max", "min", 0]))
def test_eer_never_improves_when_a_cost_or_the_error_grows(frame, row, column, factor, reference):
    row = row % len(frame)
    costs = {"macs": 1.0, "params": 0.5}
    before = efficient_error_rate(frame, costs, reference=reference)
    worse = frame.copy()
    worse.loc[row, column] *= factor
    if reference == 0 and row == 0:
        return  # the reference row itself is 1 by definition
    after = efficient_error_rate(worse, costs, reference=reference)
    assert after[row] >= before[row] - 1e-12


@settings(max_examples=80, deadline=None)
@given(table, st.sampled_from(["macs", "params", "error"]), st.floats(1e-3, 1e3), st.sampled_from(["max", "min", 1]))
def test_eer_rankings_do_not_depend_on_units(frame, column, scale, reference):
    costs = {"macs": 1.0, "params": 2.0}
    before = efficient_error_rate(frame, costs, reference=reference)
    rescaled = frame.copy()
    rescaled[column] *= scale  # e.g. GMACs -> MACs, or error in % -> fraction
    after = efficient_error_rate(rescaled, costs, reference=reference)
    assert np.allclose(before.to_numpy(), after.to_numpy(), rtol=1e-9)


# --------------------------------------------------------------------------- spread and standard errors


def test_interval_of_the_median_and_its_verdicts():
    i = metrics.Interval.of([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (i.median, i.minimum, i.maximum, i.n, i.level) == (3.0, 1.0, 5.0, 5, 0.95)
    assert 1.0 <= i.low < 3.0 < i.high <= 5.0
    assert metrics.Interval.of([1.2, 1.3, 1.25, 1.22, 1.28]).verdict() == "faster"
    assert metrics.Interval.of([0.7, 0.8, 0.75, 0.72, 0.78]).verdict() == "slower"
    assert metrics.Interval.of([0.9, 1.1, 1.0, 1.2]).verdict() == "within noise"
    assert metrics.Interval.of([2.0, 2.0]).format(2, "x") == "2.00x (95% CI 2.00x-2.00x, 2 rounds)"
    assert metrics.speedup_phrase(metrics.Interval.of([2.0, 2.0])) == "2.00x (95% CI 2.00x-2.00x, 2 rounds), faster"
    with pytest.raises(ValueError, match="finite"):
        metrics.Interval.of([])
    with pytest.raises(ValueError, match="finite"):
        metrics.Interval.of([1.0, float("nan")])
    with pytest.raises(ValueError, match="level"):
        metrics.Interval.of([1.0], level=1.0)


def test_the_interval_is_the_bootstrap_of_the_median_and_is_reproducible():
    values = [0.98, 1.2, 1.21, 1.19, 1.22, 1.18, 1.2, 1.23, 1.17, 1.2, 1.21]
    a, b = metrics.Interval.of(values), metrics.Interval.of(values)
    assert a == b  # seeded: the same rounds give the same interval
    # one round stalled at 0.98 moves the extremes but barely the interval of the median
    assert a.minimum == 0.98 and a.low > 1.15 and a.verdict() == "faster"
    rng = np.random.default_rng(1)
    medians = [np.median(rng.choice(values, len(values))) for _ in range(4000)]
    assert a.low == pytest.approx(np.quantile(medians, 0.025), abs=0.011)


def test_resolution_keeps_the_interval_from_being_narrower_than_the_instrument():
    rounds = [1.02, 1.021, 1.022, 1.019, 1.02]
    sharp = metrics.Interval.of(rounds)
    assert sharp.verdict() == "faster" and sharp.sampling_half_width < 0.01
    blunt = metrics.Interval.of(rounds, resolution=0.03)
    assert blunt.low == pytest.approx(1.02 * 0.97) and blunt.high == pytest.approx(1.02 * 1.03)
    assert blunt.verdict() == "within noise" and blunt.sampling_half_width == sharp.sampling_half_width
    phrase = metrics.speedup_phrase(blunt)
    assert phrase.startswith("inconclusive at this precision: 1.02x (95% CI 0.99x-1.05x, 5 rounds)")
    assert "could detect a difference of about 4% or more (80% power)" in phrase
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match="resolution is a fraction"):
            metrics.Interval.of(rounds, resolution=bad)


@given(st.lists(st.floats(0.01, 1e4), min_size=1, max_size=30), st.floats(0, 0.2))
def test_interval_is_ordered(values, resolution):
    i = metrics.Interval.of(values, resolution=resolution)
    assert i.minimum <= i.median <= i.maximum
    assert i.low <= i.median <= i.high
    assert i.high - i.low >= 2 * resolution * i.median - 1e-9 * i.median


def test_top1_standard_error_is_binomial():
    assert metrics.top1_se(50.0, 10_000) == pytest.approx(0.5)
    assert metrics.top1_se(90.0, 100) == pytest.approx(3.0)
    assert metrics.top1_se(100.0, 10) == 0.0
    assert metrics.format_top1(90.0, 100) == "90.00 ± 3.00%"
    with pytest.raises(ValueError, match="positive number of test images"):
        metrics.top1_se(90.0, 0)
    with pytest.raises(ValueError, match="percentage"):
        metrics.top1_se(190.0, 10)


def test_compare_top1_calls_small_differences_noise():
    # on 1,000 images at 90% the standard error is about 0.95 points; the difference's is about 1.34
    assert metrics.compare_top1(90.0, 89.0, 1000) == "within noise"
    assert metrics.compare_top1(90.0, 87.0, 1000) == "higher"
    assert metrics.compare_top1(87.0, 90.0, 1000) == "lower"
    assert metrics.compare_top1(90.0, 89.0, 100_000) == "higher"
    assert metrics.versus(90.0, 89.0, 1000) == "within noise of the control"
    assert metrics.versus(87.0, 90.0, 1000, "fp32") == "-3.00 points, lower than fp32"


def test_compare_top1_on_groups_of_different_size():
    assert metrics.compare_top1(90.0, 80.0, 10_000, n_b=10_000) == "higher"
    assert metrics.compare_top1(90.0, 80.0, 10_000, n_b=20) == "within noise"  # the small group's SE is 9 points


# --------------------------------------------------------------------------- paired comparisons, several tests, seeds


def test_mcnemar_counts_only_the_images_where_the_models_disagree():
    # 1,000 images: both right on 800, both wrong on 150; a alone right on 35, b alone on 15
    a = np.array([True] * 800 + [False] * 150 + [True] * 35 + [False] * 15)
    b = np.array([True] * 800 + [False] * 150 + [False] * 35 + [True] * 15)
    c = metrics.paired_comparison(a, b)
    assert (c.n, c.a_only, c.b_only) == (1000, 35, 15)
    assert c.difference == pytest.approx(2.0)
    # exact two-sided binomial test of 35 successes in 50 fair coin flips, computed by hand
    from math import comb
    tail = sum(comb(50, k) for k in range(35, 51)) / 2**50
    assert c.p_value == pytest.approx(2 * tail)
    assert c.verdict() == "higher" and metrics.paired_comparison(b, a).verdict() == "lower"
    assert c.low < 2.0 < c.high and c.low > 0
    # the same accuracies treated as independent would call it within noise: pairing is what sees the difference
    assert metrics.compare_top1(83.5, 81.5, 1000) == "within noise"
    assert "higher than the control: +2.00 points (95% CI" in c.phrase()


def test_paired_comparison_from_predictions_and_labels():
    labels = np.array([0, 1, 2, 3, 4, 5])
    same = metrics.paired_comparison(labels, labels, labels)
    assert same.difference == 0 and same.p_value == 1.0 and same.verdict() == "within noise"
    assert same.detectable == pytest.approx(100.0)  # 6 images' worth of 6: no difference could be told here
    close = metrics.paired_comparison(np.array([0, 1, 2, 3, 4, 0]), np.array([0, 1, 2, 3, 0, 5]), labels)
    assert (close.a_only, close.b_only) == (1, 1) and close.verdict() == "within noise"
    assert "inconclusive at this precision" in close.phrase() and "could detect" in close.phrase()
    with pytest.raises(ValueError, match="one entry per test image"):
        metrics.paired_comparison(np.array([0, 1]), np.array([0, 1]), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="booleans"):
        metrics.paired_comparison(np.array([0, 1]), np.array([0, 1]))
    with pytest.raises(ValueError, match="same images"):
        metrics.paired_comparison(np.array([True, False]), np.array([True]))


def test_the_paired_bootstrap_is_reproducible_and_covers_the_difference():
    rng = np.random.default_rng(3)
    a, b = rng.random(500) < 0.8, rng.random(500) < 0.75
    first, again = metrics.paired_comparison(a, b), metrics.paired_comparison(a, b)
    assert first == again
    assert first.low <= first.difference <= first.high
    assert first.se > 0 and first.detectable == pytest.approx(2.8016 / 1.96 * 1.96 * first.se, rel=1e-3)


def test_holm_adjusts_the_smallest_p_value_most():
    adjusted = metrics.holm({"a": 0.01, "b": 0.04, "c": 0.03})
    assert adjusted == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06})
    assert metrics.holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])
    with pytest.raises(ValueError, match="between 0 and 1"):
        metrics.holm([1.5])


def test_seeded_comparison_adds_seed_and_image_noise():
    # two seeds, four images; differences in points: seed 0 (0, 100, 100, 0) -> 50, seed 1 (0, 100, 0, 0) -> 25
    a = [[True, True, True, False], [True, True, False, False]]
    b = [[True, False, False, False], [True, False, False, False]]
    q = metrics.seeded_comparison(a, b)
    assert (q.k, q.n, q.per_seed) == (2, 4, (50.0, 25.0))
    assert q.difference == pytest.approx(37.5)
    seed_var = ((50 - 37.5) ** 2 + (25 - 37.5) ** 2) / 1 / 2  # var over seeds (ddof 1) / k = 156.25
    image_var = ((0 - 37.5) ** 2 + (100 - 37.5) ** 2 + (50 - 37.5) ** 2 + (0 - 37.5) ** 2) / 3 / 4  # 572.92
    assert q.seed_se == pytest.approx(seed_var**0.5) and q.image_se == pytest.approx(image_var**0.5)
    assert q.se == pytest.approx((seed_var + image_var) ** 0.5)
    df = (seed_var + image_var) ** 2 / (seed_var**2 / 1 + image_var**2 / 3)
    assert q.df == pytest.approx(df)
    assert q.seed_std == pytest.approx(12.5 * 2**0.5)
    from scipy.stats import t
    half = t.ppf(0.975, df) * q.se  # about 75 points: the upper end would pass 100 and is clipped there
    assert q.low == pytest.approx(37.5 - half) and q.high == 100.0
    assert q.p_value == pytest.approx(2 * t.sf(37.5 / q.se, df))


def test_seeded_comparison_verdicts():
    labels = np.zeros(1000, dtype=int)
    good = np.where(np.arange(1000) < 900, 0, 1)  # right on 900 images
    worse = np.where(np.arange(1000) < 800, 0, 1)  # right on 800, a subset of good's
    q = metrics.seeded_comparison([good] * 3, [worse] * 3, labels)
    assert q.difference == pytest.approx(10.0) and q.verdict() == "higher" and q.seed_se == 0.0
    assert metrics.seeded_comparison([worse] * 3, [good] * 3, labels).verdict() == "lower"
    assert q.phrase("b").startswith("higher than b: +10.00 points") and "3 seeds" in q.phrase("b")
    # seeds that disagree: +5, -5, +6 points, each on its own images; the image noise is small
    same = np.ones(1000, dtype=bool)

    def shifted(k: int) -> np.ndarray:
        c = same.copy()
        c[:abs(k)] = False
        return c

    a = [same, shifted(50), same]
    b = [shifted(50), same, shifted(60)]
    spread = metrics.seeded_comparison(a, b)
    assert spread.per_seed == pytest.approx((5.0, -5.0, 6.0))
    assert spread.verdict() == "within noise"
    assert spread.phrase().startswith("inconclusive at this precision against the control")
    assert spread.detectable > abs(spread.difference)
    # identical predictions: no difference, and the detectable difference is at least one image's worth
    tie = metrics.seeded_comparison([good, good], [good, good], labels)
    assert (tie.difference, tie.p_value, tie.verdict()) == (0.0, 1.0, "within noise")
    assert tie.detectable == pytest.approx(0.1)


def test_seeded_comparison_one_seed_and_bad_input():
    one = metrics.seeded_comparison(np.array([1, 1, 0, 1]), np.array([1, 0, 0, 1]), np.array([1, 1, 1, 1]))
    assert one.k == 1 and np.isnan(one.seed_std) and "1 seed, seed noise not measured" in one.format()
    assert one.difference == pytest.approx(25.0)
    with pytest.raises(ValueError, match="the same seeds"):
        metrics.seeded_comparison([[True, False]] * 3, [[True, False]] * 2)
    with pytest.raises(ValueError, match="booleans"):
        metrics.seeded_comparison([[1, 0]], [[1, 1]])


def test_seed_table_shows_mean_and_seed_std():
    rows = pd.DataFrame({"model": ["a", "a", "a", "b", "b", "b"], "seed": [0, 1, 2] * 2,
                         "top1": [80.0, 82.0, 84.0, 70.0, 70.0, 70.0]})
    t = metrics.seed_table(rows)
    assert list(t.index) == ["a", "b"]
    assert t.loc["a"].tolist() == [82.0, 2.0, 3] and t.loc["b", "top1 seed std"] == 0.0
    with pytest.raises(KeyError, match="accuracy"):
        metrics.seed_table(rows, value="accuracy")
