"""The learned prior over ensemble members, inference-budget sweeps, and loss-against-epochs curves.

The prior is the weight vector w = softmax(beta) that minimises the NLL of the probability mixture
sum_i w_i p_i on the fitness tokens (held-out training documents; never validation). Any method may
use it; the harness uses it for the K sweep and for curves.

Why EM rather than gradient descent on beta: the objective f(w) = -mean_n log(sum_i w_i p_in) is convex
in w over the simplex (minus the log of a linear function), so every stationary point is the global
optimum, and the softmax parametrisation only reaches the same set of mixtures. For this problem
expectation-maximisation is the multiplicative update

    r_in = w_i p_in / sum_j w_j p_jn,    w_i <- mean_n r_in,

which stays on the simplex with no step size to tune, never increases f (it minimises a Jensen upper
bound that touches f at the current w), and costs one pass over the M x N matrix per iteration. Its
fixed points with all w_i > 0 are the optimum, and starting from uniform weights it converges to it.
Convergence is certified rather than guessed: with s_i = mean_n p_in / sum_j w_j p_jn (the quantity EM
multiplies by), convexity gives f(w) - min f <= max_i s_i - 1, so the loop stops when that gap is
below the tolerance (nats/token), and reports when the iteration cap came first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from harness.ensemble import mean_nll, mixture_logp, normalise_weights
from harness.errors import SlowrunError

DEFAULT_TOL = 1e-8
DEFAULT_MAX_ITER = 2000


@dataclass(frozen=True)
class PriorFit:
    """Weights fit on fitness data. ``history`` is the fitness NLL before each update and after the last."""

    weights: np.ndarray  # (M,), non-negative, sums to one
    nll: float  # fitness NLL of the mixture with these weights, nats/token
    iterations: int
    converged: bool
    gap: float  # certified upper bound on nll - optimal nll
    history: tuple[float, ...]

    @property
    def beta(self) -> np.ndarray:
        """Logits of the weights (w = softmax(beta)); -inf for a member with zero weight."""
        with np.errstate(divide="ignore"):
            return np.log(self.weights)


@dataclass(frozen=True)
class KSweepPoint:
    """One inference budget: the members kept (largest prior weight first), their weights, the losses."""

    k: int
    members: tuple[int, ...]
    weights: tuple[float, ...]
    fitness_nll: float
    val_nll: float


@dataclass(frozen=True)
class CurvePoint:
    """Val loss reachable at ``epochs``: the predictor chosen on fitness data from snapshots stamped <= epochs.

    ``choice`` says which candidate won on fitness NLL: "prior" (learned mixture) or "single" (best member).
    """

    epochs: float
    val_nll: float
    members: tuple[int, ...]
    weights: tuple[float, ...]
    fitness_nll: float
    choice: str


def _as_matrix(logps, what: str) -> np.ndarray:
    """(M, N) float64 matrix from an (M, ...) array or a list of equal-shape member arrays."""
    members = list(logps) if not isinstance(logps, np.ndarray) else [logps[i] for i in range(logps.shape[0])]
    if isinstance(logps, np.ndarray) and logps.ndim < 2:
        raise SlowrunError(f"{what} must be (members, tokens), got shape {logps.shape}")
    if not members:
        raise SlowrunError(f"{what} has no members")
    flat = [np.asarray(m, dtype=np.float64).reshape(-1) for m in members]
    if len({f.shape[0] for f in flat}) != 1:
        raise SlowrunError(f"every member of {what} must score the same tokens; got sizes {[f.shape[0] for f in flat]}")
    matrix = np.stack(flat)
    if matrix.shape[1] == 0:
        raise SlowrunError(f"{what} has no tokens")
    # Float32 rounding can put a near-certain token a hair above zero; a clearly positive value means
    # losses were passed where log-probabilities belong.
    if np.isnan(matrix).any() or (matrix > 1e-4).any():
        raise SlowrunError(f"{what} must hold log-probabilities (<= 0, no NaN), not losses")
    return matrix


def _member_list(logps) -> list:
    return list(logps) if not isinstance(logps, np.ndarray) else [logps[i] for i in range(logps.shape[0])]


def fit_prior(
    logp_fit,
    *,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    init=None,
) -> PriorFit:
    """Fit mixture weights by EM on a (members x fitness tokens) log-probability matrix.

    ``init`` (default uniform) must be strictly positive: EM never revives a weight that is zero.
    """
    if tol <= 0 or max_iter < 0:
        raise SlowrunError(f"tol must be > 0 and max_iter >= 0, got tol={tol}, max_iter={max_iter}")
    L = _as_matrix(logp_fit, "logp_fit")
    n_members, n_tokens = L.shape
    peak = L.max(axis=0)
    if not np.all(np.isfinite(peak)):
        bad = int(np.argmin(np.isfinite(peak)))
        raise SlowrunError(f"fitness token {bad} has probability zero under every member; no mixture can score it")
    # Scaled probabilities in [0, 1]; a member more than ~745 nats below the best on a token contributes 0.
    P = np.exp(L - peak)
    offset = float(peak.mean())

    if init is None:
        w = np.full(n_members, 1.0 / n_members)
    else:
        w = normalise_weights(init, n_members)
        if np.any(w <= 0):
            raise SlowrunError("init weights must all be > 0: EM keeps a zero weight at zero forever")

    def state(weights):
        mix = weights @ P
        nll = -(float(np.log(mix).mean()) + offset)
        scale = (P @ (1.0 / mix)) / n_tokens  # s_i; w_i * s_i is the EM update
        return nll, scale

    nll, scale = state(w)
    history = [nll]
    iterations = 0
    gap = max(0.0, float(scale.max()) - 1.0)
    while gap > tol and iterations < max_iter:
        w = w * scale
        w /= w.sum()
        nll, scale = state(w)
        history.append(nll)
        iterations += 1
        gap = max(0.0, float(scale.max()) - 1.0)
    w.setflags(write=False)
    return PriorFit(weights=w, nll=nll, iterations=iterations, converged=gap <= tol, gap=gap, history=tuple(history))


def _ranked(weights: np.ndarray) -> list[int]:
    """Member indices by decreasing weight; equal weights keep index order, so the choice is reproducible."""
    return sorted(range(len(weights)), key=lambda i: (-weights[i], i))


def top_k(weights, k: int) -> np.ndarray:
    """Keep the k largest weights (ties: lower member index first), zero the rest, renormalise to one."""
    w = normalise_weights(weights, len(np.asarray(weights).reshape(-1)))
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= len(w):
        raise SlowrunError(f"k must be an integer between 1 and the number of members ({len(w)}), got {k!r}")
    kept = _ranked(w)[:k]
    out = np.zeros_like(w)
    out[kept] = w[kept]
    total = out.sum()
    if total <= 0:
        # Every kept member has weight zero: spread the budget evenly over them instead of dividing by 0.
        out[kept] = 1.0
        total = float(k)
    return out / total


def default_ks(n_members: int) -> tuple[int, ...]:
    """1, 2, 4, ... up to the number of members, which is always included."""
    ks = []
    k = 1
    while k < n_members:
        ks.append(k)
        k *= 2
    ks.append(n_members)
    return tuple(ks)


def k_sweep(
    logp_fit,
    logp_val,
    ks: Sequence[int] | None = None,
    *,
    refit: bool = False,
    prior: PriorFit | None = None,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
) -> list[KSweepPoint]:
    """Validation loss for each inference budget K, from cached log-probabilities only.

    For each K the members with the K largest prior weights (fit once on fitness data) are kept. By
    default (``refit=False``, as the design specifies) their prior weights are renormalised; with
    ``refit=True`` the weights among the kept K are fit again on the fitness data, which can only lower
    the fitness NLL. Validation data is only ever scored, never used to choose.
    """
    fit = _as_matrix(logp_fit, "logp_fit")
    val_members = _member_list(logp_val)
    n_members = fit.shape[0]
    if len(val_members) != n_members:
        raise SlowrunError(f"logp_fit has {n_members} members but logp_val has {len(val_members)}")
    ks = default_ks(n_members) if ks is None else tuple(ks)
    for k in ks:
        if not isinstance(k, (int, np.integer)) or not 1 <= k <= n_members:
            raise SlowrunError(f"every K must be an integer between 1 and {n_members}, got {k!r}")
    if prior is None:
        prior = fit_prior(fit, tol=tol, max_iter=max_iter)
    elif len(prior.weights) != n_members:
        raise SlowrunError(f"the given prior has {len(prior.weights)} weights for {n_members} members")
    order = _ranked(prior.weights)
    points = []
    for k in ks:
        members = order[:k]
        if refit:
            sub = fit_prior(fit[members], tol=tol, max_iter=max_iter)
            weights, fitness_nll = np.asarray(sub.weights), sub.nll
        else:
            weights = top_k(prior.weights, k)[members]
            fitness_nll = mean_nll(mixture_logp(fit[members], weights))
        val_nll = mean_nll(mixture_logp([val_members[i] for i in members], weights))
        points.append(
            KSweepPoint(
                k=int(k),
                members=tuple(int(i) for i in members),
                weights=tuple(float(x) for x in weights),
                fitness_nll=float(fitness_nll),
                val_nll=float(val_nll),
            )
        )
    return points


def loss_curve(
    snapshot_epochs: Sequence[float],
    logp_fit,
    logp_val,
    *,
    k: int | None = None,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
) -> list[CurvePoint]:
    """Val loss against epochs: at each distinct epoch stamp e, the best predictor from snapshots stamped <= e.

    Two candidates are built from the eligible snapshots on fitness data alone: the learned prior (kept
    to its ``k`` largest weights when an inference budget is given) and the single member with the lowest
    fitness NLL. The one with the lower fitness NLL is scored on validation (a tie goes to the single
    member, the simpler predictor). Choosing on validation would leak the test set into the curve.
    """
    epochs = [float(e) for e in snapshot_epochs]
    fit = _as_matrix(logp_fit, "logp_fit")
    val_members = _member_list(logp_val)
    if not (len(epochs) == fit.shape[0] == len(val_members)):
        raise SlowrunError(
            f"need one epoch stamp per snapshot: got {len(epochs)} stamps, {fit.shape[0]} fitness caches, "
            f"{len(val_members)} validation caches"
        )
    if any(not math.isfinite(e) or e < 0 for e in epochs):
        raise SlowrunError(f"epoch stamps must be finite and non-negative, got {epochs}")
    if k is not None and (not isinstance(k, (int, np.integer)) or k < 1):
        raise SlowrunError(f"k must be a positive integer or None, got {k!r}")
    single_nll = -fit.mean(axis=1)
    curve = []
    for stamp in sorted(set(epochs)):
        eligible = [i for i, e in enumerate(epochs) if e <= stamp]
        prior = fit_prior(fit[eligible], tol=tol, max_iter=max_iter)
        weights = np.asarray(prior.weights)
        prior_nll = prior.nll
        if k is not None and k < len(eligible):
            weights = top_k(weights, k)
            prior_nll = mean_nll(mixture_logp(fit[eligible], weights))
        best_single = min(eligible, key=lambda i: (single_nll[i], i))
        if single_nll[best_single] <= prior_nll:
            members, member_weights, fitness_nll, choice = [best_single], np.ones(1), single_nll[best_single], "single"
        else:
            nonzero = [j for j in _ranked(weights) if weights[j] > 0]
            members = [eligible[j] for j in nonzero]
            member_weights, fitness_nll, choice = weights[nonzero], prior_nll, "prior"
        val_nll = mean_nll(mixture_logp([val_members[i] for i in members], member_weights))
        curve.append(
            CurvePoint(
                epochs=stamp,
                val_nll=float(val_nll),
                members=tuple(int(i) for i in members),
                weights=tuple(float(x) for x in member_weights),
                fitness_nll=float(fitness_nll),
                choice=choice,
            )
        )
    return curve
