"""What the harness reports from the prior: top-K truncations, the K sweep (loss against inference
budget) and the loss-against-epochs curve (the prior refitted on each prefix of the snapshots).
"""


from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from harness.eval.ensemble import mean_nll, mixture_logp
from harness.errors import SlowrunError
from harness.eval.prior.prefix_path import PrefixPath
from harness.eval.prior.solver import (DEFAULT_MAX_ITER, DEFAULT_TOL, PriorFit, Problem, as_matrix, better_candidate,
                                     default_ks, fit_problem, initial_weights, member_list, ranked, scaled, top_k)

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


# A subset of members may reuse probabilities scaled by the whole set's per-token peak when its own
# peak is within this many nats of it on every token: a member then underflows only if it is more than
# ~445 nats below the subset's best on that token, where it carries < e^-445 of the mixture anyway.
_SUBSET_RESCALE_NATS = 300.0


def _subproblem(P: np.ndarray, offset: float, single_nll: np.ndarray, rows, members: list,
                subset_peak: np.ndarray | None = None) -> Problem:
    """The problem restricted to ``rows``: the shared rescaled matrix unless the subset sits too far below it.

    ``rows`` is a slice (a view, no copy) or an index list; ``subset_peak`` is the subset's per-token
    maximum of P when the caller keeps it up to date. The shared matrix is scaled by the whole set's
    per-token peak; when some token's best member in the subset is more than _SUBSET_RESCALE_NATS below
    that peak, the subset is rescaled from its own log-probabilities so that nothing underflows.
    """
    sub = P[rows]
    if subset_peak is None:
        subset_peak = sub.max(axis=0)
    if float(subset_peak.min()) >= math.exp(-_SUBSET_RESCALE_NATS):
        return Problem(sub, offset, single_nll[rows])
    picked = range(P.shape[0])[rows] if isinstance(rows, slice) else rows
    own, own_offset, own_single = scaled(as_matrix([members[i] for i in picked], "logp_fit"))
    return Problem(own, own_offset, own_single)


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
    ``refit=True`` the weights among the kept K are fit again on the fitness data, starting from those
    renormalised weights, which can only lower the fitness NLL. Validation data is only ever scored,
    never used to choose.
    """
    fit_members = member_list(logp_fit)
    L = as_matrix(logp_fit, "logp_fit")
    val_members = member_list(logp_val)
    n_members = L.shape[0]
    if len(val_members) != n_members:
        raise SlowrunError(f"logp_fit has {n_members} members but logp_val has {len(val_members)}")
    ks = default_ks(n_members) if ks is None else tuple(ks)
    for k in ks:
        if not isinstance(k, (int, np.integer)) or not 1 <= k <= n_members:
            raise SlowrunError(f"every K must be an integer between 1 and {n_members}, got {k!r}")
    if prior is not None and len(prior.weights) != n_members:
        raise SlowrunError(f"the given prior has {len(prior.weights)} weights for {n_members} members")
    if prior is None or refit:
        P, offset, single_nll = scaled(L)
    if prior is None:
        prior = fit_problem(Problem(P, offset, single_nll), initial_weights(None, n_members), tol, max_iter, "newton")[0]
    order = ranked(prior.weights)
    points = []
    for k in ks:
        members = order[:k]
        weights = top_k(prior.weights, k)[members]
        if refit:
            sub = fit_problem(_subproblem(P, offset, single_nll, members, fit_members), weights, tol, max_iter,
                       "newton")[0]
            weights, fitness_nll = np.asarray(sub.weights), sub.nll
        else:
            fitness_nll = mean_nll(mixture_logp([fit_members[i] for i in members], weights))
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


def _prefix_fits(P: np.ndarray, offset: float, single_nll: np.ndarray, sizes: Sequence[int], members: list,
                 tol: float, max_iter: int):
    """The certified prior over each prefix P[:m], m in ``sizes`` (increasing), one PriorFit per size.

    Prefixes share the whole set's rescaled matrix and go through one ``PrefixPath``. A prefix whose
    per-token best member sits more than _SUBSET_RESCALE_NATS below the whole set's peak would underflow
    there; it is rescaled on its own and fit by ``fit_problem`` from the previous optimum, and the path then
    continues from that fit's weights with its caches cleared (rare: only the first stamps of a run can
    be that far below its later snapshots).
    """
    path = PrefixPath(P, offset, single_nll)
    prefix_peak = np.zeros(P.shape[1])
    done = 0
    previous: np.ndarray | None = None
    for index, m in enumerate(sizes):
        m_next = sizes[index + 1] if index + 1 < len(sizes) else m
        np.maximum(prefix_peak, P[done:m].max(axis=0), out=prefix_peak)
        done = m
        if float(prefix_peak.min()) >= math.exp(-_SUBSET_RESCALE_NATS):
            fit, _ = path.fit(m, m_next, tol, max_iter)
            prob = Problem(P[:m], offset, single_nll[:m])
        else:
            prob = _subproblem(P, offset, single_nll, slice(0, m), members, prefix_peak)
            init = initial_weights(None, m) if previous is None else np.concatenate([previous, np.zeros(m - len(previous))])
            fit, _ = fit_problem(prob, init, tol, max_iter, "newton")
            path.restart(np.asarray(fit.weights))
        better = better_candidate(prob, np.asarray(fit.weights), fit.nll, fit.converged)
        if better is not None:
            nll, weights, fallback = better
            weights.setflags(write=False)
            fit = replace(fit, weights=weights, nll=nll, history=fit.history + (nll,), fallback=fallback,
                          passes=fit.passes + prob.passes, rows_read=fit.rows_read + prob.rows_read)
            path.restart(weights)
        previous = np.asarray(fit.weights)
        yield fit


# The most points a run's loss curve reports (see curve_stamps): enough for a plot on a log axis and for
# interpolating epochs-to-match, few enough that a run of hundreds of snapshots (slowrun PR #90's q0
# takes 480) costs a few prior fits rather than hundreds.
CURVE_POINTS = 32


def curve_stamps(snapshot_epochs: Sequence[float], max_points: int | None = None) -> list[float]:
    """The epoch stamps a loss curve reports: every distinct stamp when there are at most ``max_points``
    (default CURVE_POINTS); else a walk along log(epochs) from the first stamp to the last (the whole
    run), each step to the first stamp at least an even share of the remaining log range further, so the
    points left are spread evenly over what is left. A stamp at 0 epochs is kept before the walk when
    there are at least 3 points.

    Why thin at all: every reported stamp is a certified prior fit, at least one read of its members, so
    a curve over every stamp of a 480-snapshot run costs tens of fits. Why on a log scale: loss against
    data is read on a log axis, where evenly spaced points show the early fast fall and the late slow one
    alike. Points are real stamps, never interpolated between snapshots.
    """
    max_points = CURVE_POINTS if max_points is None else max_points
    if max_points < 2:
        raise SlowrunError(f"a loss curve needs at least 2 points, got max_points={max_points}")
    stamps = sorted({float(e) for e in snapshot_epochs})
    if len(stamps) <= max_points:
        return stamps
    chosen = [stamps[0]] if stamps[0] <= 0 and max_points >= 3 else []  # 0 epochs, when room is left
    positive = [e for e in stamps if e > 0]
    logs = np.log(positive)
    chosen.append(positive[0])
    left = max_points - len(chosen)  # points still to place, the last stamp among them
    i = 0
    while left > 1:
        step = (logs[-1] - logs[i]) / left
        j = int(np.searchsorted(logs, logs[i] + step, side="left"))
        if j >= len(positive) - 1:
            break
        chosen.append(positive[j])
        i, left = j, left - 1
    chosen.append(positive[-1])
    return chosen


def loss_curve(
    snapshot_epochs: Sequence[float],
    logp_fit,
    logp_val,
    *,
    k: int | None = None,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    stamps: Sequence[float] | None = None,
) -> list[CurvePoint]:
    """Val loss against epochs: at each distinct epoch stamp e, the best predictor from snapshots stamped <= e.

    Two candidates are built from the eligible snapshots on fitness data alone: the learned prior (kept
    to its ``k`` largest weights when an inference budget is given) and the single member with the lowest
    fitness NLL. The one with the lower fitness NLL is scored on validation (a tie goes to the single
    member, the simpler predictor). Choosing on validation would leak the test set into the curve.

    The stamps are visited in order along one ``PrefixPath`` (see it for why each step reads only a
    few members): each fit starts from the previous stamp's optimum mixed with an even blend of the new
    snapshots, in the proportion an exact line search picks (zero when they do not help, decided from
    their gradients without a product), so a stamp costs a few Newton steps over the support instead of a
    fit, and at most the new snapshots' rows when they do not help. Every stamp is certified to ``tol``
    over all its snapshots, so the curve equals the from-scratch one within it. ``stamps`` chooses the
    epochs reported (each must be a snapshot's stamp; e.g. :func:`curve_stamps`); None reports every
    distinct stamp.
    """
    epochs = [float(e) for e in snapshot_epochs]
    fit_members = member_list(logp_fit)
    val_members = member_list(logp_val)
    if isinstance(logp_fit, np.ndarray) and logp_fit.ndim < 2:
        raise SlowrunError(f"logp_fit must be (members, tokens), got shape {logp_fit.shape}")
    if not (len(epochs) == len(fit_members) == len(val_members)):
        raise SlowrunError(
            f"need one epoch stamp per snapshot: got {len(epochs)} stamps, {len(fit_members)} fitness caches, "
            f"{len(val_members)} validation caches"
        )
    if any(not math.isfinite(e) or e < 0 for e in epochs):
        raise SlowrunError(f"epoch stamps must be finite and non-negative, got {epochs}")
    if k is not None and (not isinstance(k, (int, np.integer)) or k < 1):
        raise SlowrunError(f"k must be a positive integer or None, got {k!r}")
    # Members sorted by stamp (stable), so the snapshots eligible at each stamp are a prefix: a view.
    order = sorted(range(len(epochs)), key=lambda i: (epochs[i], i))
    sorted_members = [fit_members[i] for i in order]
    P, offset, single_nll = scaled(as_matrix(sorted_members, "logp_fit"))
    distinct = sorted(set(epochs))
    if stamps is None:
        stamps = distinct
    else:
        stamps = sorted({float(e) for e in stamps})
        unknown = sorted(set(stamps) - set(distinct))
        if unknown or not stamps:
            raise SlowrunError(f"curve stamps must be snapshots' epoch stamps; {unknown or 'none'} given "
                               f"(the snapshots have {distinct[:8]}{'...' if len(distinct) > 8 else ''})")
    sizes = [sum(1 for e in epochs if e <= stamp) for stamp in stamps]
    curve = []
    for stamp, m, prior in zip(stamps, sizes, _prefix_fits(P, offset, single_nll, sizes, sorted_members, tol, max_iter)):
        previous = np.asarray(prior.weights)
        weights = previous
        prior_nll = prior.nll
        if k is not None and k < m:
            # top_k breaks weight ties by position: rank in snapshot (original index) order, as documented.
            by_index = sorted(range(m), key=lambda j: order[j])
            weights = np.zeros(m)
            weights[by_index] = top_k(previous[by_index], k)
            prior_nll = mean_nll(mixture_logp([sorted_members[j] for j in range(m)], weights))
        best_single = min(range(m), key=lambda j: (single_nll[j], order[j]))
        if single_nll[best_single] <= prior_nll:
            members, member_weights = [order[best_single]], np.ones(1)
            fitness_nll, choice = float(single_nll[best_single]), "single"
        else:
            nonzero = sorted((j for j in range(m) if weights[j] > 0), key=lambda j: (-weights[j], order[j]))
            members = [order[j] for j in nonzero]
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
