"""The board's statistics against scipy (an independent implementation) and hand-worked values."""

from __future__ import annotations

import math

import pytest

from leaderboard import stats

scipy_stats = pytest.importorskip("scipy.stats", reason="scipy is the independent check (pip install -e .[dev])")
scipy_special = pytest.importorskip("scipy.special")


@pytest.mark.parametrize("a,b,x", [(0.5, 0.5, 0.3), (2.0, 0.5, 0.9), (10.0, 0.5, 0.01), (1.5, 7.0, 0.5),
                                   (50.0, 0.5, 0.99), (0.7, 3.0, 0.999)])
def test_incomplete_beta_matches_scipy(a, b, x):
    assert stats.regularized_incomplete_beta(a, b, x) == pytest.approx(scipy_special.betainc(a, b, x), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("df", [1, 2, 3, 4.5, 10, 29.3, 200])
@pytest.mark.parametrize("t", [-40.0, -3.1, -0.2, 0.0, 0.7, 2.5, 12.0])
def test_t_cdf_matches_scipy(t, df):
    assert stats.student_t_cdf(t, df) == pytest.approx(scipy_stats.t.cdf(t, df), rel=1e-10, abs=1e-14)


@pytest.mark.parametrize("df", [1, 2, 4, 9, 30.5])
@pytest.mark.parametrize("p", [0.005, 0.5, 0.9, 0.975, 0.995])
def test_t_quantile_matches_scipy(p, df):
    assert stats.student_t_quantile(p, df) == pytest.approx(scipy_stats.t.ppf(p, df), rel=1e-9, abs=1e-12)


def test_interval_of_slowruns_three_published_seeds():
    seeds = [3.38216, 3.38240, 3.38229]
    interval = stats.mean_interval(seeds)
    # by hand: mean 3.38228333..., s = 1.2014e-4, t(0.975, 2) = 4.302653
    assert interval.mean == pytest.approx(3.3822833333333333, abs=1e-15)
    low, high = scipy_stats.t.interval(0.95, 2, loc=sum(seeds) / 3, scale=scipy_stats.sem(seeds))
    assert (interval.low, interval.high) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))
    assert interval.half_width == pytest.approx(4.302653 * 1.2013882e-4 / math.sqrt(3), rel=1e-5)


def test_single_value_has_no_interval_and_no_test():
    interval = stats.mean_interval([3.2])
    assert (interval.mean, interval.n, interval.low, interval.high) == (3.2, 1, None, None)
    assert stats.welch_one_sided([3.1], [3.2, 3.21]) is None
    assert stats.welch_one_sided([3.1, 3.11], [3.2]) is None


@pytest.mark.parametrize("new,old", [
    ([3.101, 3.103, 3.102], [3.110, 3.112, 3.109, 3.111]),
    ([3.30, 3.32], [3.31, 3.33, 3.29]),
    ([3.2, 3.25, 3.19, 3.22, 3.24], [3.2, 3.21]),
])
def test_welch_matches_scipy(new, old):
    ours = stats.welch_one_sided(new, old)
    theirs = scipy_stats.ttest_ind(new, old, equal_var=False, alternative="less")
    assert ours.p_value == pytest.approx(theirs.pvalue, rel=1e-9, abs=1e-15)
    assert ours.t == pytest.approx(-theirs.statistic, rel=1e-12)
    assert ours.df == pytest.approx(theirs.df, rel=1e-12)


def test_samples_without_spread_give_certain_answers():
    assert stats.welch_one_sided([3.0, 3.0], [3.1, 3.1]).p_value == 0.0
    assert stats.welch_one_sided([3.1, 3.1], [3.0, 3.0]).p_value == 1.0


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        stats.mean([])
    with pytest.raises(ValueError):
        stats.student_t_cdf(1.0, 0)
    with pytest.raises(ValueError):
        stats.student_t_quantile(1.0, 3)
