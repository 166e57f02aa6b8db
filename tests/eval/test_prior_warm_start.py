"""Warm starts: fit_prior(init=...) and the loss curve's stamp-to-stamp fits equal from-scratch optima.

References are independent: scipy's SLSQP on the simplex in float64 and brute-force mixture NLLs.
"""

from __future__ import annotations

import numpy as np
import pytest

import harness.eval.prior.sweeps as sweeps
from harness.eval.prior import fit_prior, loss_curve

from tests.eval.test_prior_newton import brute_nll, slsqp_optimum, trajectory


def test_warm_started_fit_equals_the_cold_fit_with_fewer_passes():
    logp = trajectory(12, 3000, 2)
    previous = fit_prior(logp[:11])
    # The previous optimum (zeros lifted to a tiny weight: init must be positive) plus a small share
    # for the new member.
    lifted = previous.weights + 1e-6
    init = np.r_[0.9 * lifted / lifted.sum(), 0.1]
    warm, cold = fit_prior(logp, init=init), fit_prior(logp)
    assert warm.converged and cold.converged
    assert abs(warm.nll - cold.nll) <= 1e-8
    assert abs(warm.nll - slsqp_optimum(logp)) <= 1e-9
    assert warm.history[0] == pytest.approx(brute_nll(logp, init), abs=1e-12)
    assert warm.passes < cold.passes


def record_fits(monkeypatch) -> list:
    """Every PriorFit the loss curve fits, one per stamp in order (wraps the internal per-prefix fits)."""
    fits = []
    original = sweeps._prefix_fits

    def recording(*args, **kwargs):
        for fit in original(*args, **kwargs):
            fits.append(fit)
            yield fit

    monkeypatch.setattr(sweeps, "_prefix_fits", recording)
    return fits


def test_loss_curve_equals_from_scratch_optima_at_every_stamp(monkeypatch):
    rng = np.random.default_rng(21)
    logp_fit = np.log(rng.uniform(0.01, 1.0, size=(7, 400)))  # random members: a unique optimum
    logp_val = np.log(rng.uniform(0.01, 1.0, size=(7, 150)))
    epochs = [3.0, 1.0, 2.0, 1.0, 4.0, 2.0, 5.0]
    fits = record_fits(monkeypatch)
    curve = loss_curve(epochs, logp_fit, logp_val)
    assert [p.epochs for p in curve] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert len(fits) == 5 and all(f.converged for f in fits)
    for point in curve:
        eligible = [i for i, e in enumerate(epochs) if e <= point.epochs]
        best_single = min(-logp_fit[i].mean() for i in eligible)
        assert point.fitness_nll == pytest.approx(min(best_single, slsqp_optimum(logp_fit[eligible])), abs=1e-8)
        cold = fit_prior(logp_fit[eligible], tol=1e-12)
        if point.choice == "prior":
            expected = {eligible[j]: w for j, w in enumerate(cold.weights) if w > 0}
            assert set(point.members) == set(expected)
            np.testing.assert_allclose(point.weights, [expected[i] for i in point.members], atol=1e-6)
        assert point.val_nll == pytest.approx(brute_nll(logp_val[list(point.members)], point.weights), abs=1e-12)


def test_loss_curve_warm_start_costs_less_than_refitting_from_scratch(monkeypatch):
    logp = trajectory(16, 2000, 9)
    fits = record_fits(monkeypatch)
    loss_curve(list(range(16)), logp, logp[:, :200])
    warm = [f.passes for f in fits]
    monkeypatch.undo()
    cold = [fit_prior(logp[: m + 1]).passes for m in range(16)]
    assert len(warm) == 16
    # Measured 244 against 332: each stamp starts a few Newton steps from its optimum, not from uniform.
    assert sum(warm) <= 0.8 * sum(cold)
    assert warm[-1] < cold[-1]


def test_loss_curve_rescales_a_prefix_far_below_the_later_snapshots():
    # Snapshot 0 gives token 0 log-probability -1000 where snapshot 1 gives -1: scaled by the whole
    # set's peak, snapshot 0 alone would underflow to probability zero there.
    logp = np.array([[-1000.0, -2.0, -2.0, -2.0], [-1.0, -1.5, -3.0, -1.5]])
    curve = loss_curve([1.0, 2.0], logp, logp)
    assert curve[0].members == (0,)
    assert curve[0].fitness_nll == pytest.approx(-logp[0].mean(), rel=1e-12)
    assert curve[1].fitness_nll == pytest.approx(min(-logp[1].mean(), slsqp_optimum(logp)), abs=1e-9)
