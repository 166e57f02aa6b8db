"""The learned prior over ensemble members: the certified convex fit of one set of members.

The prior is the weight vector w = softmax(beta) that minimises the NLL of the probability mixture
sum_i w_i p_i on the fitness tokens (held-out training documents; never validation). Any method may
use it; the harness uses it for the K sweep and for curves.

The objective f(w) = -mean_n log(sum_i w_i p_in) is convex in w over the simplex (minus the log of a
linear function), so every stationary point is the global optimum; the softmax parametrisation only
reaches the same set of mixtures. Convergence is certified rather than guessed: with
s_i = mean_n p_in / sum_j w_j p_jn (minus the gradient), convexity gives f(w) - min f <= max_i s_i - 1,
so a fit stops when that gap is below the tolerance (nats/token), and reports when the cap came first.

Why a Newton-type method and not EM. EM (w_i <- w_i s_i) stays on the simplex and never increases f,
but it converges linearly at a rate set by how alike the members are, and snapshots along one training
run are very alike: on runs with 8 or more snapshots it hit its 2,000-iteration cap every time (a
capped fit of 100 snapshots x 1M tokens took ~14 minutes and was still not certified), and weights
that belong at zero only decay geometrically, never reaching it. Here each iteration is one sequential
quadratic programming step: the exact quadratic model of f at w (gradient -s, Hessian
H = (1/N) P^T diag(1/q^2) P with q = P w) is minimised over the simplex by a small active-set solver
that sets useless members to exactly zero in one step, and an exact line search along the segment to
that minimiser never increases f and never leaves the simplex (the segment lies inside it). Near the
optimum the full step is taken and convergence is quadratic: tens of passes over the M x N matrix where
EM needs tens of thousands. The Hessian is built only over the members that can move (positive weight,
or a gradient asking for weight): after the first steps from uniform weights that is the few members
of the optimum's support, and a Hessian over them costs about one pass. If a step fails to lower f
(rounding at the limit of float64), a plain EM step is taken instead, which cannot increase f either.
Close to the optimum every other step reuses the previous Hessian (_REUSE_GAP), which barely changes
there and is the costliest part of a step.

Never worse than a simpler predictor: a fit's returned point is compared with every single member
(free: their NLLs are known) and, when the fit is not certified, with the top-K truncations of its own
weights (one pass); the better one is returned and ``PriorFit.fallback`` says so. At the optimum this
cannot trigger, since the simplex contains both, so it only catches fits stopped by the iteration cap.

A pass is one product of the M x N matrix with a vector (q = P w, or the gradient P^T (1/q)) or one
Hessian build; ``PriorFit.passes`` counts them, so fits (and EM, kept as ``method="em"`` for reference)
can be compared on the work that dominates.

Numerics: probabilities are rescaled per token by the best member's probability (p_in / max_j p_jn), so
log-probabilities of -80 or -1000 do not underflow to zero; the shift is added back to f. Every sum is
float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from harness.eval.ensemble import normalise_weights
from harness.errors import SlowrunError

DEFAULT_TOL = 1e-8
DEFAULT_MAX_ITER = 2000
METHODS = ("newton", "em")

# A member whose gradient says it would gain weight almost as much as the current support (s_i above
# 1 - this) joins the Newton step even at zero weight, so members near the threshold are not left for
# later iterations one at a time.
ENTER_MARGIN = 1e-3
# A step is accepted when f rises by no more than this relative amount: the line search only moves
# downhill (its slopes are exact to far better than this), so such a rise is rounding of the mean of
# N logs, which grows with log N; steps that close to the optimum change f by ~1e-16.
ROUNDING = 1e-13
# Below this gap, after a full step with the same members in play, the next step reuses the last
# Hessian instead of rebuilding it (at most one step in two): that close to the optimum it has barely
# changed, so convergence stays superlinear, and the build is a step's costliest part (|W|^2 N / 2
# multiply-adds against M N for a pass).
_REUSE_GAP = 1e-3
# Tokens per chunk times members: bounds the float64 working set of the Hessian and top-K checks.
_CHUNK_ELEMENTS = 1 << 21
# A candidate (single member or top-K truncation) replaces the fit only when better by more than this,
# in nats/token: below it the two NLLs differ by rounding of the mean, not by a worse point.
_TIE = 1e-12


@dataclass(frozen=True)
class PriorFit:
    """Weights fit on fitness data. ``history`` is the fitness NLL before each update and after the last.

    ``passes`` counts products of the members x tokens matrix (q = P w, gradient, Hessian build, top-K
    check): the cost a fit pays. ``rows_read`` counts the member rows those products read (a product with
    a sparse weight vector reads only its support), so fits over different member counts compare by it. ``method`` is the solver ("newton" or "em") and ``iterations`` its
    steps. ``fallback`` is None, or "single" / "top-k" when the iterate ended worse on fitness than the
    best single member or a top-K truncation of itself, and that better point was returned instead (the
    gap stays a valid bound: the returned point is better than the one certified).
    """

    weights: np.ndarray  # (M,), non-negative, sums to one
    nll: float  # fitness NLL of the mixture with these weights, nats/token
    iterations: int
    converged: bool
    gap: float  # certified upper bound on nll - optimal nll
    history: tuple[float, ...]
    passes: int = 0
    method: str = "newton"
    fallback: str | None = None
    rows_read: int = 0  # member rows those products read: rows_read / M is passes weighted by the rows read

    @property
    def beta(self) -> np.ndarray:
        """Logits of the weights (w = softmax(beta)); -inf for a member with zero weight."""
        with np.errstate(divide="ignore"):
            return np.log(self.weights)


def member_list(logps) -> list:
    return list(logps) if not isinstance(logps, np.ndarray) else [logps[i] for i in range(logps.shape[0])]


def as_matrix(logps, what: str) -> np.ndarray:
    """A fresh (M, N) float64 matrix from an (M, ...) array or a list of equal-shape member arrays.

    Always a new array (callers rescale it in place), filled member by member so that float32 caches
    never exist as a second float64 copy.
    """
    if isinstance(logps, np.ndarray) and logps.ndim < 2:
        raise SlowrunError(f"{what} must be (members, tokens), got shape {logps.shape}")
    members = member_list(logps)
    if not members:
        raise SlowrunError(f"{what} has no members")
    sizes = [int(np.size(m)) for m in members]
    if len(set(sizes)) != 1:
        raise SlowrunError(f"every member of {what} must score the same tokens; got sizes {sizes}")
    if sizes[0] == 0:
        raise SlowrunError(f"{what} has no tokens")
    matrix = np.empty((len(members), sizes[0]), dtype=np.float64)
    for row, member in zip(matrix, members):
        row[:] = np.asarray(member).reshape(-1)
    # Float32 rounding can put a near-certain token a hair above zero; a clearly positive value means
    # losses were passed where log-probabilities belong.
    if np.isnan(matrix).any() or (matrix > 1e-4).any():
        raise SlowrunError(f"{what} must hold log-probabilities (<= 0, no NaN), not losses")
    return matrix


class Problem:
    """f(w) = -mean_n log(w . P[:, n]) - offset on rescaled probabilities P, counting passes over P.

    ``P`` may be a view (a prefix of a larger matrix's rows); it is never written.
    """

    def __init__(self, P: np.ndarray, offset: float, single_nll: np.ndarray):
        self.P = P
        self.offset = offset
        self.single_nll = single_nll  # fitness NLL of each member alone, from the log-probabilities
        self.passes = 0
        self.rows_read = 0

    @property
    def shape(self) -> tuple[int, int]:
        return self.P.shape

    def mix(self, w: np.ndarray) -> np.ndarray:
        """q = P^T w, reading only the rows with weight (a sparse iterate costs a fraction of a pass).

        Row by row rather than w[active] @ P[active]: gathering the rows would copy them first.
        """
        self.passes += 1
        active = np.flatnonzero(w)
        self.rows_read += len(active)
        if len(active) == len(w) or len(active) == 0:
            return w @ self.P
        q = w[active[0]] * self.P[active[0]]
        for i in active[1:]:
            q += w[i] * self.P[i]
        return q

    def nll(self, q: np.ndarray) -> float:
        with np.errstate(divide="ignore"):
            return -(float(np.log(q).mean()) + self.offset)

    def scale(self, q: np.ndarray) -> np.ndarray:
        """s_i = mean_n P_in / q_n: minus the gradient; max_i s_i - 1 bounds the distance to the optimum."""
        self.passes += 1
        self.rows_read += self.P.shape[0]
        with np.errstate(divide="ignore"):
            inv = 1.0 / q
        return (self.P @ inv) / q.shape[0]

    def hessian(self, rows: np.ndarray, q: np.ndarray) -> np.ndarray:
        """H = (1/N) P_W^T diag(1/q^2) P_W over the members ``rows`` (W), as Z Z^T with Z = P_W / q.

        Counted as one pass (it reads each of those rows once), but it does |W|/2 times the
        multiply-adds of one: with all 100 members in play it takes about as long as 30 passes, a
        handful of members about as long as one. It is exact on every token: a regular subsample looked
        cheaper but missed the few tokens where a small-weight member is the only one that predicts
        well, which dominate its curvature, and the steps then converged only linearly.
        """
        self.passes += 1
        self.rows_read += len(rows)
        n_tokens = self.P.shape[1]
        chunk = max(1024, _CHUNK_ELEMENTS // len(rows))
        H = np.zeros((len(rows), len(rows)))
        buffer = np.empty((len(rows), chunk))
        for start in range(0, n_tokens, chunk):
            stop = min(n_tokens, start + chunk)
            inv = 1.0 / q[start:stop]
            Z = buffer[:, : stop - start]
            for j, i in enumerate(rows):
                np.multiply(self.P[i, start:stop], inv, out=Z[j])
            H += Z @ Z.T
        return H / n_tokens


def scaled(L: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """Rescale a fresh float64 log-prob matrix in place to P = exp(L - per-token peak); also member NLLs."""
    peak = L.max(axis=0)
    if not np.all(np.isfinite(peak)):
        bad = int(np.argmin(np.isfinite(peak)))
        raise SlowrunError(f"fitness token {bad} has probability zero under every member; no mixture can score it")
    single_nll = -L.mean(axis=1)
    L -= peak
    np.exp(L, out=L)
    return L, float(peak.mean()), single_nll


def simplex_qp(H: np.ndarray, g: np.ndarray, center: np.ndarray) -> np.ndarray:
    """The step d minimising g.d + 1/2 d^T H d with center + d on the simplex (primal active-set method).

    Starts at d = 0 (``center`` is feasible); each step minimises the model on the face of the members
    still free (a KKT system of their size) and stops at the first bound it would cross, fixing that
    member at zero; at a face minimiser the member whose multiplier is most negative is freed again.
    Every step lowers the model, so even a capped solve returns a feasible step no worse than d = 0.
    The step is accumulated as d rather than returned as a point x: near the optimum it is ~1e-9 of
    the weights, and x - center would lose it to rounding. A tiny ridge keeps the KKT system solvable
    when members are identical (H singular); it only picks the smallest step among equally good ones.
    """
    k = len(center)
    d = np.zeros(k)
    free = center > 0
    ridge = 1e-12 * max(float(np.trace(H)) / k, 1e-300)
    Hr = H + ridge * np.eye(k)
    at_face_minimum = False
    for _ in range(10 * k + 50):
        grad = g + Hr @ d
        F = np.flatnonzero(free)
        if not at_face_minimum:
            kf = len(F)
            if kf == 1:
                p = np.zeros(1)
            else:
                K = np.zeros((kf + 1, kf + 1))
                K[:kf, :kf] = Hr[np.ix_(F, F)]
                K[:kf, kf] = 1.0
                K[kf, :kf] = 1.0
                rhs = np.concatenate([-grad[F], [0.0]])
                try:
                    p = np.linalg.solve(K, rhs)[:kf]
                except np.linalg.LinAlgError:
                    p = np.linalg.lstsq(K, rhs, rcond=None)[0][:kf]
                if not np.all(np.isfinite(p)):
                    break
            alpha, block = 1.0, -1
            shrinking = np.flatnonzero(p < 0)
            if shrinking.size:
                ratios = (center[F[shrinking]] + d[F[shrinking]]) / -p[shrinking]
                j = int(np.argmin(ratios))
                if ratios[j] < 1.0:
                    alpha, block = max(0.0, float(ratios[j])), int(F[shrinking[j]])
            d[F] += alpha * p
            if block >= 0:
                d[block] = -center[block]
                free[block] = False
            else:
                at_face_minimum = True
            continue
        Z = np.flatnonzero(~free)
        if Z.size == 0:
            break
        mu = float(grad[F].mean())
        lam = grad[Z] - mu  # model change per unit of weight moved from the free members to member Z[j]
        j = int(np.argmin(lam))
        if lam[j] >= -1e-15 * (1.0 + abs(mu)):
            break
        free[Z[j]] = True
        at_face_minimum = False
    # Rounding can leave a free weight a hair below zero: clip it, then restore sum(d) = 0 on the members
    # with the most room (the largest weights), where the correction is relatively smallest.
    d = np.maximum(d, -center)
    d[int(np.argmax(center + d))] -= float(d.sum())
    return d


def line_search(q: np.ndarray, u: np.ndarray) -> float:
    """The t in [0, 1] minimising phi(t) = -mean log(q + t u), or 0 when u is no descent direction.

    phi is convex, so its minimiser on [0, 1] is 1 when phi'(1) <= 0 and otherwise the root of phi',
    found by Newton steps kept inside a shrinking bracket. Only slopes are used: near the optimum the
    decrease of phi is below the rounding of phi itself, while its slope is still accurate. Costs O(N)
    per evaluation, no pass over P.
    """
    slope0 = -float(np.mean(u / q))
    if not slope0 < 0:
        return 0.0
    end = q + u
    # A mixture that drops every member covering some token scores it zero: f is infinite at t = 1.
    if np.all(end > 0) and -float(np.mean(u / end)) <= 0:
        return 1.0
    lo, hi, t = 0.0, 1.0, 0.5
    for _ in range(100):
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = u / (q + t * u)
            slope = -float(ratio.mean())
        if not slope <= 0:  # positive, or NaN/inf where q + t u reached zero: past the minimiser
            hi = t
        else:
            lo = t
        if abs(slope) <= 1e-14 * abs(slope0):
            return t  # the minimiser, to far better than the rounding of phi
        if hi - lo <= 1e-15:
            break
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            step = t - slope / float(np.mean(ratio * ratio))
        t = step if lo < step < hi else 0.5 * (lo + hi)
    return lo  # downhill of the minimiser: phi(lo) < phi(0) since phi' < 0 on [0, lo]


def _newton(prob: Problem, w: np.ndarray, tol: float, max_iter: int, q: np.ndarray | None = None,
            q_exact: bool = True):
    """SQP iterations (see the module docstring) from ``w``; returns w, q, f, gap, iterations, history.

    ``w`` may hold zeros (a warm start): a member at zero joins the step as soon as its gradient asks
    for weight. If no member with weight covers some token (q = 0 there, f infinite), half the weight is
    spread uniformly first, which covers every token. ``q`` is P w when the caller already has it
(``q_exact`` False if it was carried along a step rather than computed from w).

    q is carried along the steps (q + t P d) rather than recomputed. Once the gap computed on it is
    below ``tol``, q is recomputed from w (one pass) and the gap is widened by the largest relative
    drift r between the two, since s computed on the exact q is at most (1 + r) times s on the carried
    one: the certificate never rests on accumulated rounding, and needs no second gradient pass.
    """
    n_members = len(w)
    if q is None:
        q, q_exact = prob.mix(w), True
    if not np.all(q > 0):
        w = 0.5 * w + 0.5 / n_members
        q, q_exact = prob.mix(w), True
    f = prob.nll(q)
    history = [f]
    exact = q_exact  # q was computed from w directly
    iterations = 0
    reuse_ok, last_rows = False, None
    while True:
        s = prob.scale(q)
        gap = max(0.0, float(s.max()) - 1.0)
        if gap <= tol and not exact:
            w = w / w.sum()
            fresh = prob.mix(w)
            drift = float(np.max(q / fresh)) - 1.0 if np.all(fresh > 0) else math.inf
            q, exact = fresh, True
            f = history[-1] = prob.nll(q)
            gap = (1.0 + gap) * (1.0 + max(drift, 0.0)) - 1.0
            if gap > tol:
                continue  # not certified after all: iterate from the exact q
        if gap <= tol or iterations >= max_iter:
            break
        # Members at zero whose gradient says they would lose weight stay at zero for this step.
        rows = np.flatnonzero((w > 0) | (s >= 1.0 - ENTER_MARGIN))
        if reuse_ok and gap < _REUSE_GAP and np.array_equal(rows, last_rows):
            reuse_ok = False  # this step reuses H; the next one rebuilds it
        else:
            H, reuse_ok = prob.hessian(rows, q), True
        last_rows = rows
        d = np.zeros_like(w)
        d[rows] = simplex_qp(H, -s[rows], w[rows])
        u = prob.mix(d)
        t = line_search(q, u)
        if t > 0.0:
            new_w = w + t * d
            if t == 1.0:
                new_w[d == -w] = 0.0  # members the step removes are exactly zero, not rounding residue
            new_q = q + t * u
            new_f = prob.nll(new_q)
        if t > 0.0 and np.all(new_w >= 0) and np.all(new_q > 0) and new_f <= f + ROUNDING * max(1.0, abs(f)):
            w, q, exact = new_w, new_q, False
            reuse_ok = reuse_ok and t == 1.0
        else:
            # No usable step from the model: an EM step never increases f (up to rounding).
            em = w * s
            em /= em.sum()
            em_q = prob.mix(em)
            new_f = prob.nll(em_q)
            if not new_f <= f + ROUNDING * max(1.0, abs(f)):
                break
            w, q, exact, reuse_ok = em, em_q, True, False
        f = new_f
        history.append(f)
        iterations += 1
    return w, q if exact else None, f, gap, iterations, history


def _em(prob: Problem, w: np.ndarray, tol: float, max_iter: int, q: np.ndarray | None = None,
        q_exact: bool = True):
    """Plain EM (w_i <- w_i s_i), two passes per iteration: the reference the Newton fit is measured against."""
    if q is None or not q_exact:
        q = prob.mix(w)
    f = prob.nll(q)
    history = [f]
    s = prob.scale(q)
    gap = max(0.0, float(s.max()) - 1.0)
    iterations = 0
    while gap > tol and iterations < max_iter:
        w = w * s
        w /= w.sum()
        q = prob.mix(w)
        f = prob.nll(q)
        s = prob.scale(q)
        history.append(f)
        iterations += 1
        gap = max(0.0, float(s.max()) - 1.0)
    return w, q, f, gap, iterations, history


def better_candidate(prob: Problem, w: np.ndarray, f: float, converged: bool):
    """A single member or top-K truncation of ``w`` with lower fitness NLL than ``f``, or None.

    At the optimum neither can win (the simplex holds every vertex and every truncation), so a winner
    means the iterate stopped short. Single members cost nothing (their NLLs are known); truncations
    cost one pass for all K together, and are only checked when the fit is not certified: a converged
    fit is within ``tol`` of every point of the simplex, truncations included.
    """
    best_single = int(np.argmin(prob.single_nll))
    best = None
    if prob.single_nll[best_single] < f - _TIE:
        w_single = np.zeros_like(w)
        w_single[best_single] = 1.0
        best = (float(prob.single_nll[best_single]), w_single, "single")
    support = int(np.count_nonzero(w))
    ks = [k for k in default_ks(len(w)) if 1 < k < support]
    if not converged and ks:
        order = np.array(ranked(w)[: max(ks)])
        cum = np.cumsum(w[order])
        n_tokens = prob.shape[1]
        partial = np.empty((len(ks), n_tokens))
        chunk = max(1024, _CHUNK_ELEMENTS // len(order))
        prob.passes += 1
        prob.rows_read += len(order)
        for start in range(0, n_tokens, chunk):
            stop = min(n_tokens, start + chunk)
            running = np.cumsum(w[order, None] * prob.P[order, start:stop], axis=0)
            partial[:, start:stop] = running[[k - 1 for k in ks]]
        for row, k in enumerate(ks):
            nll_k = prob.nll(partial[row] / cum[k - 1])
            if nll_k < min(f, best[0] if best else math.inf) - _TIE:
                w_k = np.zeros_like(w)
                w_k[order[:k]] = w[order[:k]] / cum[k - 1]
                best = (nll_k, w_k, "top-k")
    return best


def fit_problem(prob: Problem, init: np.ndarray, tol: float, max_iter: int, method: str,
         q: np.ndarray | None = None, q_exact: bool = True) -> tuple[PriorFit, np.ndarray | None]:
    """Run the solver, then the never-worse check; also P w for the returned w, or None if not at hand."""
    solver = _newton if method == "newton" else _em
    w, q, f, gap, iterations, history = solver(prob, np.array(init, dtype=np.float64), tol, max_iter, q, q_exact)
    w = w / w.sum()
    converged = gap <= tol
    fallback = None
    better = better_candidate(prob, w, f, converged)
    if better is not None:
        f, w, fallback = better
        history.append(f)
        q = None
    w.setflags(write=False)
    fit = PriorFit(weights=w, nll=f, iterations=iterations, converged=converged, gap=gap,
                   history=tuple(history), passes=prob.passes, method=method, fallback=fallback,
                   rows_read=prob.rows_read)
    return fit, q


def check_settings(tol: float, max_iter: int, method: str) -> None:
    if tol <= 0 or max_iter < 0:
        raise SlowrunError(f"tol must be > 0 and max_iter >= 0, got tol={tol}, max_iter={max_iter}")
    if method not in METHODS:
        raise SlowrunError(f"method must be one of {METHODS}, got {method!r}")


def initial_weights(init, n_members: int) -> np.ndarray:
    if init is None:
        return np.full(n_members, 1.0 / n_members)
    w = normalise_weights(init, n_members)
    if np.any(w <= 0):
        raise SlowrunError(
            "init weights must all be > 0 (give a member a small weight rather than zero): EM keeps a zero "
            "weight at zero forever"
        )
    return w


def fit_prior(
    logp_fit,
    *,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    init=None,
    method: str = "newton",
) -> PriorFit:
    """Fit mixture weights on a (members x fitness tokens) log-probability matrix.

    ``init`` (default uniform) is a warm start, e.g. the weights of a fit on fewer members extended with
    a small weight for the new ones; it must be strictly positive, since EM never revives a weight that
    is zero (the Newton fit would, but one rule for both keeps ``init`` meaning the same). ``method`` is
    "newton" (the default; see the module docstring) or "em" (plain EM, kept as the reference). Either
    way the fit returns the best single member or top-K truncation instead if the iterate ends worse on
    fitness than it, and says so in ``fallback``.
    """
    check_settings(tol, max_iter, method)
    P, offset, single_nll = scaled(as_matrix(logp_fit, "logp_fit"))
    return fit_problem(Problem(P, offset, single_nll), initial_weights(init, P.shape[0]), tol, max_iter, method)[0]


def ranked(weights: np.ndarray) -> list[int]:
    """Member indices by decreasing weight; equal weights keep index order, so the choice is reproducible."""
    return sorted(range(len(weights)), key=lambda i: (-weights[i], i))


def top_k(weights, k: int) -> np.ndarray:
    """Keep the k largest weights (ties: lower member index first), zero the rest, renormalise to one."""
    w = normalise_weights(weights, len(np.asarray(weights).reshape(-1)))
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= len(w):
        raise SlowrunError(f"k must be an integer between 1 and the number of members ({len(w)}), got {k!r}")
    kept = ranked(w)[:k]
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
