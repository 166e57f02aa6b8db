"""The Newton (SQP) prior fit against independent solvers: optimum, certified gap, pass counts, numerics,
and the guarantee never to return a mixture worse on fitness than a single member or a top-K truncation.

Expectations come from code written here, not from harness.eval.prior: scipy's SLSQP on the simplex in
float64, a plain EM loop, brute-force probability-space NLLs and gradients.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import harness.eval.prior.solver as solver
from harness.errors import SlowrunError
from harness.eval.prior import default_ks, fit_prior, k_sweep

optimize = pytest.importorskip("scipy.optimize")


def brute_nll(logp: np.ndarray, weights) -> float:
    """Mixture NLL in float64, shifted per token: log sum w p = peak + log sum w e^(l - peak), exactly."""
    logp = np.asarray(logp, dtype=np.float64)
    peak = logp.max(axis=0)
    with np.errstate(divide="ignore"):
        return float(-np.mean(np.log(np.asarray(weights, dtype=np.float64) @ np.exp(logp - peak)) + peak))


def brute_scale(logp: np.ndarray, weights) -> np.ndarray:
    """s_i = mean_n p_in / q_n (minus the gradient of the NLL), in float64, shift-invariant per token."""
    logp = np.asarray(logp, dtype=np.float64)
    probs = np.exp(logp - logp.max(axis=0))
    return probs @ (1.0 / (np.asarray(weights, dtype=np.float64) @ probs)) / probs.shape[1]


def slsqp_optimum(logp: np.ndarray) -> float:
    """Optimal mixture NLL on the simplex from scipy's SLSQP (analytic gradient, ftol 1e-16), float64."""
    logp = np.asarray(logp, dtype=np.float64)
    peak = logp.max(axis=0)
    probs = np.exp(logp - peak)
    m, n = probs.shape

    def f(w):
        return float(-np.mean(np.log(np.clip(w, 0, None) @ probs)) - peak.mean())

    def grad(w):
        return -(probs @ (1.0 / (np.clip(w, 0, None) @ probs))) / n

    result = optimize.minimize(
        f, np.full(m, 1.0 / m), jac=grad, method="SLSQP", bounds=[(0.0, 1.0)] * m,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones(m)}],
        options={"ftol": 1e-16, "maxiter": 10_000},
    )
    w = np.clip(result.x, 0.0, None)
    return brute_nll(logp, w / w.sum())


def plain_em(logp: np.ndarray, iterations: int) -> np.ndarray:
    """The textbook multiplicative update from uniform weights, for a fixed number of iterations."""
    m = logp.shape[0]
    w = np.full(m, 1.0 / m)
    for _ in range(iterations):
        w = w * brute_scale(logp, w)
        w /= w.sum()
    return w


def trajectory(m: int, n: int, seed: int) -> np.ndarray:
    """Snapshots along one run: shared token difficulty, an AR(1) drift between neighbours, slowly improving."""
    rng = np.random.default_rng(seed)
    difficulty = rng.gamma(1.2, 2.5, size=n)
    drift = np.zeros(n)
    out = np.empty((m, n))
    for i in range(m):
        drift = 0.9 * drift + np.sqrt(1 - 0.81) * rng.standard_normal(n)
        out[i] = -difficulty * (1.3 - 0.3 * i / max(m - 1, 1)) * np.exp(0.25 * drift)
    return out


def complementary(n: int = 400) -> np.ndarray:
    rng = np.random.default_rng(5)
    rare = np.arange(n) % 10 == 0
    a = np.where(rare, 1e-4, 0.5) * rng.uniform(0.9, 1.1, n)
    b = np.where(rare, 1e-4, 0.5) * rng.uniform(0.9, 1.1, n)
    return np.log(np.stack([a, b, np.where(rare, 0.5, 0.01)]))


def near_identical(n: int = 300) -> np.ndarray:
    """Member 0 is better than members 1 and 2 on every token by 1e-4 to 3e-4 nats: the optimum is vertex 0."""
    rng = np.random.default_rng(3)
    base = np.log(rng.uniform(0.05, 0.9, n))
    return np.stack([base, base - 1e-4 * rng.uniform(1, 2, n), base - 1e-4 * rng.uniform(2, 3, n)])


CASES = {
    "uniform": lambda: np.log(np.random.default_rng(8).uniform(0.01, 1.0, (5, 200))),
    "complementary": complementary,
    "trajectory": lambda: trajectory(12, 3000, 2),
    "near-identical": near_identical,
    "dominant-plus-junk": lambda: np.vstack([np.full((1, 50), -2.0), np.full((6, 50), -80.0)]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_optimum_matches_slsqp_and_the_certificate_is_independent(case):
    logp = CASES[case]()
    fit = fit_prior(logp)
    reference = slsqp_optimum(logp)
    assert fit.converged and fit.gap <= 1e-8
    assert abs(fit.nll - reference) <= 1e-9
    assert fit.nll == pytest.approx(brute_nll(logp, fit.weights), abs=1e-12)
    # The stopping rule recomputed from scratch: no member's gradient asks for more than tol of weight.
    assert brute_scale(logp, fit.weights).max() - 1.0 <= 1e-8 + 1e-12
    assert np.all(fit.weights >= 0) and fit.weights.sum() == pytest.approx(1.0, abs=1e-12)


def test_sparse_optimum_is_exactly_sparse_and_matches_kkt():
    logp = trajectory(12, 3000, 2)
    fit = fit_prior(logp, tol=1e-12)
    s = brute_scale(logp, fit.weights)
    support = fit.weights > 0
    assert 1 < support.sum() < len(support)  # an interior face: some members exactly zero
    np.testing.assert_allclose(s[support], 1.0, atol=1e-11)  # equal gradients on the support
    assert np.all(s[~support] <= 1.0 + 1e-11)  # and no zero-weight member wants weight


@pytest.mark.parametrize("method", ["newton", "em"])
@pytest.mark.parametrize("cap", [0, 1, 2, 3, 5])
def test_reported_gap_bounds_the_distance_to_the_independent_optimum(method, cap):
    for case in ("uniform", "trajectory", "complementary"):
        logp = CASES[case]()
        reference = slsqp_optimum(logp)
        fit = fit_prior(logp, tol=1e-13, max_iter=cap, method=method)
        assert fit.iterations <= cap
        assert fit.nll == pytest.approx(brute_nll(logp, fit.weights), abs=1e-12)
        assert fit.nll - reference <= fit.gap + 1e-12
        assert np.all(np.diff(fit.history) <= 1e-12)


def test_em_counts_two_passes_per_iteration():
    # Two members: no top-K truncation to check, so the count is exactly q and gradient per iteration.
    logp = near_identical()[:2]
    fit = fit_prior(logp, method="em", max_iter=7)
    assert fit.iterations == 7 and not fit.converged
    assert fit.passes == 2 + 2 * 7


def test_newton_passes_are_every_matrix_product(monkeypatch):
    calls = {"n": 0}
    for name in ("mix", "scale", "hessian"):
        original = getattr(solver.Problem, name)

        def counted(self, *args, _original=original):
            calls["n"] += 1
            return _original(self, *args)

        monkeypatch.setattr(solver.Problem, name, counted)
    fit = fit_prior(trajectory(12, 3000, 2))
    assert fit.converged  # so no top-K check adds a pass outside these three
    assert fit.passes == calls["n"]
    # At least a gradient and a step product per iteration (the Hessian may be reused near the
    # optimum), plus the start and the final certificate.
    assert fit.passes >= 2 * fit.iterations + 2


def test_newton_needs_under_a_tenth_of_the_passes_of_em():
    logp = trajectory(12, 3000, 2)
    newton = fit_prior(logp)
    em = fit_prior(logp, method="em", max_iter=10**6)
    assert newton.converged and em.converged
    assert newton.passes <= 0.1 * em.passes
    assert abs(newton.nll - em.nll) <= 2e-8


def test_capped_em_ends_worse_than_the_best_member_and_the_fit_does_not():
    logp = near_identical()
    singles = -logp.mean(axis=1)
    em_weights = plain_em(logp, 2000)
    assert brute_nll(logp, em_weights) - singles.min() > 1e-7  # the failure the guard exists for
    fit = fit_prior(logp)
    assert fit.converged and fit.fallback is None
    assert fit.nll <= singles.min() + 1e-12
    np.testing.assert_array_equal(fit.weights, [1.0, 0.0, 0.0])  # the active set reaches the vertex exactly
    capped = fit_prior(logp, method="em", max_iter=2000)
    assert capped.fallback == "single" and not capped.converged
    np.testing.assert_array_equal(capped.weights, [1.0, 0.0, 0.0])
    assert capped.nll == pytest.approx(singles[0], abs=1e-12)
    assert capped.history[-1] == capped.nll and capped.history[-2] > capped.nll
    assert capped.nll - slsqp_optimum(logp) <= capped.gap


def test_capped_fit_falls_back_to_a_top_k_truncation():
    # Two complementary members (0 and 1) and thirty that are useless: uniform weights are far worse
    # than the two together, which beat either alone.
    half = np.arange(100) % 2 == 0
    good = np.log(np.stack([np.where(half, 0.9, 0.01), np.where(half, 0.01, 0.9)]))
    logp = np.vstack([good, np.full((30, 100), np.log(1e-6))])
    for method in ("newton", "em"):
        fit = fit_prior(logp, max_iter=0, method=method)
        assert fit.fallback == "top-k" and not fit.converged
        assert fit.nll == pytest.approx(brute_nll(logp, fit.weights), abs=1e-12)
        assert fit.nll < brute_nll(logp, np.full(32, 1 / 32)) and fit.nll < (-logp.mean(axis=1)).min()
        assert np.count_nonzero(fit.weights) in default_ks(32)


@pytest.mark.parametrize(
    "logp",
    [
        np.log(np.array([[0.3, 0.7, 0.01]])),  # one member
        np.log(np.array([[0.5], [0.25], [0.125]])),  # one token
        np.log(np.array([[0.5, 0.5], [0.9, 0.1], [0.1, 0.9]])),  # two tokens
        np.tile(np.log(np.linspace(0.1, 0.9, 40)), (4, 1)),  # identical members
        np.vstack([np.full((1, 30), -1.0), np.full((3, 30), -1e4)]),  # members that underflow
        np.vstack([np.full((1, 30), -3.0), np.r_[[-80.0] * 29, [-0.5]][None, :]]),  # -80 except one token
        np.vstack([np.r_[[-np.inf], [-1.0] * 9][None, :], np.full((1, 10), -2.0)]),  # a member with -inf
    ],
    ids=["one-member", "one-token", "two-tokens", "identical", "underflow", "minus-80", "minus-inf"],
)
def test_degenerate_cases_are_never_worse_than_the_best_member(logp):
    singles = -logp.mean(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = fit_prior(logp)
    assert fit.converged
    assert fit.nll <= singles.min() + 1e-12
    assert abs(fit.nll - slsqp_optimum(logp)) <= 1e-9
    assert fit.nll == pytest.approx(brute_nll(logp, fit.weights), abs=1e-12)


def test_very_negative_logprobs_shift_the_loss_and_not_the_weights():
    logp = trajectory(6, 800, 4)
    shift = np.where(np.arange(800) % 3 == 0, -900.0, -75.0)  # the same for every member on a token
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain, shifted = fit_prior(logp, tol=1e-12), fit_prior(logp + shift, tol=1e-12)
    assert shifted.nll == pytest.approx(plain.nll - shift.mean(), abs=1e-9)
    np.testing.assert_allclose(shifted.weights, plain.weights, atol=1e-7)


def test_float32_caches_fit_exactly_like_their_float64_values():
    cached = trajectory(8, 2000, 0).astype(np.float32)
    a, b = fit_prior(cached), fit_prior(cached.astype(np.float64))
    np.testing.assert_array_equal(a.weights, b.weights)
    assert a.nll == b.nll


def test_k_sweep_refit_reaches_the_optimum_of_each_kept_subset():
    logp_fit = trajectory(10, 1500, 6)
    logp_val = trajectory(10, 500, 7)
    for point in k_sweep(logp_fit, logp_val, ks=[2, 3, 5, 10], refit=True):
        kept = logp_fit[list(point.members)]
        assert abs(point.fitness_nll - slsqp_optimum(kept)) <= 1e-9
        assert point.fitness_nll == pytest.approx(brute_nll(kept, point.weights), abs=1e-12)


def test_unknown_method_is_refused():
    with pytest.raises(SlowrunError, match="method"):
        fit_prior(np.log(np.full((2, 3), 0.5)), method="adam")
