"""Which epoch stamps a loss curve reports: all of them up to CURVE_POINTS, else a log-spaced choice."""

from __future__ import annotations

import numpy as np
import pytest

from harness.errors import SlowrunError
from harness.eval.prior import CURVE_POINTS, curve_stamps, fit_prior, loss_curve


def test_every_stamp_is_reported_up_to_the_limit():
    epochs = [3.0, 1.0, 2.0, 1.0, 0.5]
    assert curve_stamps(epochs, max_points=4) == [0.5, 1.0, 2.0, 3.0]
    assert curve_stamps(list(range(1, CURVE_POINTS + 1))) == [float(e) for e in range(1, CURVE_POINTS + 1)]


def test_a_long_run_is_thinned_on_a_log_scale_by_hand():
    # Stamps 1, 3, 10, 30, 100, 300 and 4 points: from 1, three points left over log(300) = 5.70, so the
    # next is the first stamp >= e^(5.70/3) = 6.69: 10. From 10, two left over log(30) = 3.40: the first
    # >= 10 e^(3.40/2) = 54.8: 100. Then the last, 300.
    assert curve_stamps([300, 1, 3, 10, 30, 100], max_points=4) == [1.0, 10.0, 100.0, 300.0]
    # A stamp at 0 epochs comes first and the walk starts at the first positive one: from 1, two points
    # left, the first stamp >= e^(5.70/2) = 17.3: 30.
    assert curve_stamps([0, 1, 3, 10, 30, 100, 300], max_points=4) == [0.0, 1.0, 30.0, 300.0]


def test_a_480_snapshot_run_reports_at_most_the_limit_with_its_first_and_last_stamp():
    epochs = [2.0 * (i // 5 + 1) + 0.01 * (i % 5) for i in range(480)]  # 5 trajectories x 96 cycles of 2 epochs
    chosen = curve_stamps(epochs)
    assert len(chosen) == CURVE_POINTS
    assert chosen[0] == min(epochs) and chosen[-1] == max(epochs)
    assert set(chosen) <= set(epochs) and chosen == sorted(chosen) and len(set(chosen)) == len(chosen)
    # Past the sparse start (stamps 2 epochs apart), the points are spread evenly on the log axis: the late
    # half of the run gets about as many points as its share of log(epochs).
    late = sum(e > 96 for e in chosen)
    share = (np.log(192.04) - np.log(96)) / (np.log(192.04) - np.log(2.0))
    assert late >= 0.8 * share * CURVE_POINTS


def test_two_points_are_the_first_and_last_positive_stamps_even_with_a_zero_stamp():
    assert curve_stamps([0, 1, 3, 10], max_points=2) == [1.0, 10.0]
    assert curve_stamps([0, 1, 3, 10], max_points=3) == [0.0, 1.0, 10.0]


def test_too_few_points_is_an_error():
    with pytest.raises(SlowrunError, match="at least 2 points"):
        curve_stamps([1.0, 2.0, 3.0], max_points=1)


def test_a_curve_over_chosen_stamps_equals_from_scratch_fits_at_those_stamps():
    rng = np.random.default_rng(5)
    logp_fit = np.log(rng.uniform(0.01, 1.0, size=(9, 300)))
    logp_val = np.log(rng.uniform(0.01, 1.0, size=(9, 120)))
    epochs = [float(i + 1) for i in range(9)]
    curve = loss_curve(epochs, logp_fit, logp_val, stamps=[2.0, 5.0, 9.0])
    assert [p.epochs for p in curve] == [2.0, 5.0, 9.0]
    for point in curve:
        eligible = [i for i, e in enumerate(epochs) if e <= point.epochs]
        cold = fit_prior(logp_fit[eligible], tol=1e-12)
        best_single = min(-logp_fit[i].mean() for i in eligible)
        assert point.fitness_nll == pytest.approx(min(best_single, cold.nll), abs=1e-8)
    with pytest.raises(SlowrunError, match="must be snapshots' epoch stamps"):
        loss_curve(epochs, logp_fit, logp_val, stamps=[2.5])
