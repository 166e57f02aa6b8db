"""The loss curve's prefix path: gradient bounds from cached moments, certificates at every stamp, and cost.

References are independent: brute-force float64 gradients and NLLs and scipy's SLSQP optimum, all from
the log-probabilities, never from the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest

import harness.eval.prior.prefix_path as prefix_path
import harness.eval.prior.solver as solver
from harness.eval.prior import fit_prior, loss_curve

from tests.eval.test_prior_newton import brute_nll, brute_scale, slsqp_optimum, trajectory
from tests.eval.test_prior_warm_start import record_fits

TOL = 1e-8


def path_for(logp: np.ndarray):
    P, offset, single = solver.scaled(solver.as_matrix(logp, "logp"))
    return prefix_path.PrefixPath(P, offset, single), P


def test_gradient_bounds_from_an_earlier_mixture_hold_and_certify_far_members():
    logp = trajectory(10, 4000, 3)
    path, P = path_for(logp)
    members = len(logp)
    reference = np.r_[fit_prior(logp[:8], tol=1e-12).weights, 0.0, 0.0]  # an optimum over the first 8
    path.w[:] = reference
    path._set_q(reference @ P, 0.0)
    path._read(np.arange(members), np.zeros(0, dtype=int))
    moved = 0.98 * reference
    moved[[8, 9]] = [0.005, 0.015]  # the next stamp's members take 2% of the weight
    path.w[:] = moved
    path._set_q(moved @ P, 0.0)
    bound = path._bounds(members)
    exact = brute_scale(logp, moved)
    assert np.all(bound >= exact * (1 - 1e-12))
    # Useful, not only valid: members off the old support are certified below 1 without a read.
    off_support = np.flatnonzero(reference == 0)[:-2]
    assert off_support.size and np.any(bound[off_support] < 1.0)
    # A member read at the current mixture is bounded by its exact gradient.
    path._read(np.array([0]), np.zeros(0, dtype=int))
    assert path._bounds(members)[0] == pytest.approx(exact[0], rel=1e-12)


def test_every_stamp_is_certified_against_brute_force_gradients_and_slsqp(monkeypatch):
    logp = trajectory(20, 3000, 4)
    fits = record_fits(monkeypatch)
    curve = loss_curve(list(range(20)), logp, logp[:, :300], tol=TOL)
    assert len(curve) == len(fits) == 20
    for m, fit in enumerate(fits, start=1):
        assert fit.converged and fit.gap <= TOL
        # The certificate recomputed from scratch over the whole prefix, bounded members included.
        assert brute_scale(logp[:m], fit.weights).max() - 1.0 <= TOL + 1e-12
        assert fit.nll == pytest.approx(brute_nll(logp[:m], fit.weights), abs=1e-12)
        if m % 5 == 0:
            assert abs(fit.nll - slsqp_optimum(logp[:m])) <= 1e-8


def test_a_capped_stamp_reports_a_gap_that_bounds_its_distance_to_the_optimum(monkeypatch):
    logp = trajectory(12, 2000, 6)
    fits = record_fits(monkeypatch)
    loss_curve(list(range(12)), logp, logp[:, :100], tol=1e-13, max_iter=1)
    for m, fit in enumerate(fits, start=1):
        assert fit.iterations <= 1
        assert fit.nll - slsqp_optimum(logp[:m]) <= fit.gap + 1e-12
        assert fit.nll <= -logp[:m].mean(axis=1).min() + 1e-12  # never worse than the best member


def test_a_stamp_whose_new_members_do_not_help_reads_only_their_rows(monkeypatch):
    good = trajectory(8, 2000, 7)
    logp = np.vstack([good, good[-3:] - 2.0])  # three late snapshots worse on every token
    fits = record_fits(monkeypatch)
    curve = loss_curve(list(range(11)), logp, logp[:, :100], tol=TOL)
    assert fits[8].rows_read == 0 and [f.rows_read for f in fits[9:]] == [1, 1]
    for fit in fits[8:]:
        assert fit.converged and fit.iterations == 0
        # Its own row at most (none when the previous stamp's last read took it along), nothing else.
        assert fit.rows_read <= 1 and fit.passes <= 1
        np.testing.assert_array_equal(fit.weights[8:], 0.0)
        np.testing.assert_array_equal(fit.weights[:8], fits[7].weights)
    assert curve[-1].fitness_nll == curve[7].fitness_nll


def test_the_curve_reads_far_fewer_rows_than_refitting_every_stamp(monkeypatch):
    logp = trajectory(24, 2000, 9)
    fits = record_fits(monkeypatch)
    loss_curve(list(range(24)), logp, logp[:, :200], tol=TOL)
    curve_rows = sum(f.rows_read for f in fits)
    monkeypatch.undo()
    cold_rows = sum(fit_prior(logp[: m + 1], tol=TOL).rows_read for m in range(24))
    # Measured 2,659 rows against 5,847 for cold fits: here every snapshot joins the support, so each
    # stamp moves the optimum and reads the whole support a few times; the bench measures the M=100 case.
    assert curve_rows <= 0.55 * cold_rows


def test_rows_read_counts_only_the_rows_a_sparse_product_reads():
    logp = trajectory(6, 500, 1)
    P, offset, single = solver.scaled(solver.as_matrix(logp, "logp"))
    prob = solver.Problem(P, offset, single)
    prob.mix(np.array([0.5, 0.0, 0.0, 0.5, 0.0, 0.0]))
    assert (prob.passes, prob.rows_read) == (1, 2)
    q = prob.mix(np.full(6, 1 / 6))
    prob.scale(q)
    prob.hessian(np.array([1, 2, 4]), q)
    assert (prob.passes, prob.rows_read) == (4, 2 + 6 + 6 + 3)
