"""The learned prior (EM) against brute force, a complementary-member case, and sweep/curve selection rules."""

from __future__ import annotations


import numpy as np
import pytest

from harness.errors import SlowrunError
from harness.eval.prior import default_ks, fit_prior, k_sweep, loss_curve, top_k


def mixture_nll_brute(logp: np.ndarray, weights) -> float:
    """Probability-space mixture NLL in float64, written independently of the library."""
    probs = np.exp(np.asarray(logp, dtype=np.float64))
    return float(-np.mean(np.log(np.asarray(weights, dtype=np.float64) @ probs)))


def random_logp(m: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.log(rng.uniform(0.01, 1.0, size=(m, n)))


def test_em_optimum_matches_a_simplex_grid_search():
    logp = np.log(
        np.array(
            [
                [0.9, 0.1, 0.5, 0.3, 0.02, 0.6],
                [0.2, 0.8, 0.4, 0.1, 0.30, 0.5],
                [0.1, 0.2, 0.3, 0.9, 0.60, 0.05],
            ]
        )
    )
    steps = 400
    grid = np.array([(a, b, steps - a - b) for a in range(steps + 1) for b in range(steps + 1 - a)]) / steps
    grid_nll = -np.mean(np.log(grid @ np.exp(logp)), axis=1)
    best = int(np.argmin(grid_nll))
    fit = fit_prior(logp, tol=1e-12, max_iter=100_000)
    assert fit.converged
    assert fit.nll <= grid_nll[best] + 1e-12
    assert fit.nll >= grid_nll[best] - 1e-4  # the grid is within 1/400 of the optimum
    np.testing.assert_allclose(fit.weights, grid[best], atol=0.01)
    assert fit.nll == pytest.approx(mixture_nll_brute(logp, fit.weights), rel=1e-12)
    assert fit.weights.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(np.exp(fit.beta) / np.exp(fit.beta).sum(), fit.weights, rtol=1e-12)


def complementary_case(n: int = 400):
    """Two strong members that miss the same 10% of tokens, and a weak member that gets exactly those."""
    rng = np.random.default_rng(5)
    rare = np.arange(n) % 10 == 0
    strong_a = np.where(rare, 1e-4, 0.5) * rng.uniform(0.9, 1.1, n)
    strong_b = np.where(rare, 1e-4, 0.5) * rng.uniform(0.9, 1.1, n)
    weak = np.where(rare, 0.5, 0.01)
    return np.log(np.stack([strong_a, strong_b, weak]))


def test_weak_complementary_member_gets_weight_and_the_prior_beats_simple_rules():
    logp = complementary_case()
    fit = fit_prior(logp)
    individual = -logp.mean(axis=1)
    assert np.argmax(individual) == 2  # the weak member is the worst alone
    uniform = mixture_nll_brute(logp, np.ones(3) / 3)
    best_two = np.argsort(individual)[:2]
    top_two_individual = mixture_nll_brute(logp[best_two], [0.5, 0.5])
    assert fit.nll <= uniform
    assert fit.nll <= top_two_individual
    assert fit.nll <= individual.min()
    assert fit.weights[2] > 0.05


def test_fitness_nll_never_increases_over_em_iterations():
    logp = random_logp(5, 200, seed=7)
    fit = fit_prior(logp, tol=1e-10, max_iter=5000)
    history = np.array(fit.history)
    assert len(history) == fit.iterations + 1 > 3
    assert np.all(np.diff(history) <= 1e-12)
    assert history[0] == pytest.approx(mixture_nll_brute(logp, np.ones(5) / 5), rel=1e-12)
    assert fit.nll == history[-1]


def test_reported_gap_bounds_the_distance_to_the_optimum():
    logp = random_logp(4, 150, seed=8)
    rough = fit_prior(logp, tol=1e-3)
    exact = fit_prior(logp, tol=1e-13, max_iter=200_000)
    assert rough.converged and rough.gap <= 1e-3
    assert 0.0 <= rough.nll - exact.nll <= rough.gap + 1e-12
    capped = fit_prior(logp, tol=1e-13, max_iter=2)
    assert capped.iterations == 2 and not capped.converged


def test_top_k_keeps_largest_weights_with_index_tie_break():
    np.testing.assert_allclose(top_k([0.25, 0.25, 0.25, 0.25], 2), [0.5, 0.5, 0, 0])
    np.testing.assert_allclose(top_k([0.1, 0.4, 0.1, 0.4], 3), np.array([0.1, 0.4, 0, 0.4]) / 0.9)
    np.testing.assert_allclose(top_k([0.2, 0.5, 0.3], 3), [0.2, 0.5, 0.3])
    for bad in (0, 4, 1.5):
        with pytest.raises(SlowrunError, match="k must be"):
            top_k([0.2, 0.5, 0.3], bad)


def test_k_sweep_scores_renormalised_top_k_prior_on_validation():
    logp_fit = random_logp(5, 120, seed=9)
    logp_val = random_logp(5, 80, seed=10)
    prior = fit_prior(logp_fit)
    sweep = k_sweep(logp_fit, logp_val)
    assert [p.k for p in sweep] == list(default_ks(5)) == [1, 2, 4, 5]
    order = sorted(range(5), key=lambda i: -prior.weights[i])
    for point in sweep:
        kept = order[: point.k]
        weights = prior.weights[kept] / prior.weights[kept].sum()
        assert list(point.members) == kept
        np.testing.assert_allclose(point.weights, weights, rtol=1e-12)
        assert point.val_nll == pytest.approx(mixture_nll_brute(logp_val[kept], weights), rel=1e-12)
        assert point.fitness_nll == pytest.approx(mixture_nll_brute(logp_fit[kept], weights), rel=1e-12)
    assert sweep[-1].fitness_nll == pytest.approx(prior.nll, rel=1e-12)


def test_k_sweep_refit_only_lowers_fitness_loss():
    logp_fit = complementary_case()
    logp_val = complementary_case(200)
    plain = k_sweep(logp_fit, logp_val, ks=[1, 2, 3])
    refit = k_sweep(logp_fit, logp_val, ks=[1, 2, 3], refit=True)
    for a, b in zip(plain, refit):
        assert a.members == b.members
        assert b.fitness_nll <= a.fitness_nll + 1e-9
    with pytest.raises(SlowrunError, match="between 1 and 3"):
        k_sweep(logp_fit, logp_val, ks=[4])
    with pytest.raises(SlowrunError, match="members"):
        k_sweep(logp_fit, logp_val[:2])


def test_loss_curve_uses_only_eligible_snapshots_and_fitness_selection():
    logp_fit = random_logp(4, 150, seed=11)
    logp_val = random_logp(4, 90, seed=12)
    epochs = [2.0, 1.0, 3.0, 2.0]
    curve = loss_curve(epochs, logp_fit, logp_val)
    assert [p.epochs for p in curve] == [1.0, 2.0, 3.0]
    for point in curve:
        eligible = [i for i, e in enumerate(epochs) if e <= point.epochs]
        assert set(point.members) <= set(eligible)
        best_single = min(-logp_fit[i].mean() for i in eligible)
        prior_nll = fit_prior(logp_fit[eligible]).nll
        assert point.fitness_nll == pytest.approx(min(best_single, prior_nll), abs=1e-9)
        expected_val = mixture_nll_brute(logp_val[list(point.members)], point.weights)
        assert point.val_nll == pytest.approx(expected_val, rel=1e-12)
    assert curve[0].members == (1,) and curve[0].choice == "single"
    fitness = [p.fitness_nll for p in curve]
    assert all(b <= a + 1e-8 for a, b in zip(fitness, fitness[1:]))


def test_loss_curve_never_selects_by_validation():
    # Member 0 is better than member 1 on every fitness token, but far worse on validation.
    logp_fit = np.array([[-1.0] * 50, [-3.0] * 50])
    logp_val = np.array([[-5.0] * 30, [-0.5] * 30])
    curve = loss_curve([1.0, 2.0], logp_fit, logp_val)
    assert curve[-1].members == (0,) and curve[-1].choice == "single"
    assert curve[-1].val_nll == pytest.approx(5.0)


def test_loss_curve_with_budget_falls_back_to_best_single_member():
    # Member 0 is fair everywhere; members 1 and 2 are specialists for opposite halves of the tokens.
    # Together the specialists beat member 0, so the prior weighs them ~0.5 each and member 0 ~0; but
    # truncated to K=1 a lone specialist (2.35 nats) is far worse than member 0 (1.20 nats).
    half = np.arange(200) % 2 == 0
    logp = np.log(np.stack([np.full(200, 0.3), np.where(half, 0.9, 0.01), np.where(half, 0.01, 0.9)]))
    prior = fit_prior(logp)
    assert prior.weights[0] < 0.01 and min(prior.weights[1:]) > 0.45
    unlimited = loss_curve([1.0, 1.0, 1.0], logp, logp)[0]
    assert unlimited.choice == "prior" and set(unlimited.members) >= {1, 2}
    budget = loss_curve([1.0, 1.0, 1.0], logp, logp, k=1)[0]
    assert budget.choice == "single" and budget.members == (0,)
    assert budget.fitness_nll == pytest.approx(-np.log(0.3), rel=1e-12)
    assert budget.val_nll == pytest.approx(-np.log(0.3), rel=1e-12)


def test_bad_inputs_are_refused():
    with pytest.raises(SlowrunError, match="not losses"):
        fit_prior(np.array([[1.0, 2.0], [1.5, 0.5]]))
    with pytest.raises(SlowrunError, match="every member"):
        fit_prior(np.array([[-np.inf, -1.0], [-np.inf, -2.0]]))
    with pytest.raises(SlowrunError, match="init"):
        fit_prior(random_logp(2, 5, 0), init=[1.0, 0.0])
    with pytest.raises(SlowrunError, match="one epoch stamp per snapshot"):
        loss_curve([1.0], random_logp(2, 5, 0), random_logp(2, 5, 1))
    with pytest.raises(SlowrunError, match="non-negative"):
        loss_curve([1.0, float("nan")], random_logp(2, 5, 0), random_logp(2, 5, 1))
