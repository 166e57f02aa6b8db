"""The learned prior over ensemble members, inference-budget sweeps, and loss-against-epochs curves.

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

Warm starts: ``fit_prior(init=...)`` starts from given weights. ``loss_curve`` fits every epoch stamp
along one path over the growing prefixes of the members (``_PrefixPath``): each stamp starts from the
previous optimum plus the new snapshots' best share (line search), steps only on the members that can
move, and certifies the members far from the support from bounds on their gradients (cached moments at
an earlier mixture) instead of reading them again. A stamp whose new snapshots cannot help costs at most
their own rows. Every stamp is certified to the same tolerance over all its members, so the results
equal from-scratch fits within it.

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
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from harness.eval.ensemble import mean_nll, mixture_logp, normalise_weights
from harness.errors import SlowrunError

DEFAULT_TOL = 1e-8
DEFAULT_MAX_ITER = 2000
METHODS = ("newton", "em")

# A member whose gradient says it would gain weight almost as much as the current support (s_i above
# 1 - this) joins the Newton step even at zero weight, so members near the threshold are not left for
# later iterations one at a time.
_ENTER_MARGIN = 1e-3
# A step is accepted when f rises by no more than this relative amount: the line search only moves
# downhill (its slopes are exact to far better than this), so such a rise is rounding of the mean of
# N logs, which grows with log N; steps that close to the optimum change f by ~1e-16.
_ROUNDING = 1e-13
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
# A subset of members may reuse probabilities scaled by the whole set's per-token peak when its own
# peak is within this many nats of it on every token: a member then underflows only if it is more than
# ~445 nats below the subset's best on that token, where it carries < e^-445 of the mixture anyway.
_SUBSET_RESCALE_NATS = 300.0


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


def _member_list(logps) -> list:
    return list(logps) if not isinstance(logps, np.ndarray) else [logps[i] for i in range(logps.shape[0])]


def _as_matrix(logps, what: str) -> np.ndarray:
    """A fresh (M, N) float64 matrix from an (M, ...) array or a list of equal-shape member arrays.

    Always a new array (callers rescale it in place), filled member by member so that float32 caches
    never exist as a second float64 copy.
    """
    if isinstance(logps, np.ndarray) and logps.ndim < 2:
        raise SlowrunError(f"{what} must be (members, tokens), got shape {logps.shape}")
    members = _member_list(logps)
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


class _Problem:
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


def _scaled(L: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """Rescale a fresh float64 log-prob matrix in place to P = exp(L - per-token peak); also member NLLs."""
    peak = L.max(axis=0)
    if not np.all(np.isfinite(peak)):
        bad = int(np.argmin(np.isfinite(peak)))
        raise SlowrunError(f"fitness token {bad} has probability zero under every member; no mixture can score it")
    single_nll = -L.mean(axis=1)
    L -= peak
    np.exp(L, out=L)
    return L, float(peak.mean()), single_nll


def _simplex_qp(H: np.ndarray, g: np.ndarray, center: np.ndarray) -> np.ndarray:
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


def _line_search(q: np.ndarray, u: np.ndarray) -> float:
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


def _newton(prob: _Problem, w: np.ndarray, tol: float, max_iter: int, q: np.ndarray | None = None,
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
        rows = np.flatnonzero((w > 0) | (s >= 1.0 - _ENTER_MARGIN))
        if reuse_ok and gap < _REUSE_GAP and np.array_equal(rows, last_rows):
            reuse_ok = False  # this step reuses H; the next one rebuilds it
        else:
            H, reuse_ok = prob.hessian(rows, q), True
        last_rows = rows
        d = np.zeros_like(w)
        d[rows] = _simplex_qp(H, -s[rows], w[rows])
        u = prob.mix(d)
        t = _line_search(q, u)
        if t > 0.0:
            new_w = w + t * d
            if t == 1.0:
                new_w[d == -w] = 0.0  # members the step removes are exactly zero, not rounding residue
            new_q = q + t * u
            new_f = prob.nll(new_q)
        if t > 0.0 and np.all(new_w >= 0) and np.all(new_q > 0) and new_f <= f + _ROUNDING * max(1.0, abs(f)):
            w, q, exact = new_w, new_q, False
            reuse_ok = reuse_ok and t == 1.0
        else:
            # No usable step from the model: an EM step never increases f (up to rounding).
            em = w * s
            em /= em.sum()
            em_q = prob.mix(em)
            new_f = prob.nll(em_q)
            if not new_f <= f + _ROUNDING * max(1.0, abs(f)):
                break
            w, q, exact, reuse_ok = em, em_q, True, False
        f = new_f
        history.append(f)
        iterations += 1
    return w, q if exact else None, f, gap, iterations, history


def _em(prob: _Problem, w: np.ndarray, tol: float, max_iter: int, q: np.ndarray | None = None,
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


def _better_candidate(prob: _Problem, w: np.ndarray, f: float, converged: bool):
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
        order = np.array(_ranked(w)[: max(ks)])
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


def _fit(prob: _Problem, init: np.ndarray, tol: float, max_iter: int, method: str,
         q: np.ndarray | None = None, q_exact: bool = True) -> tuple[PriorFit, np.ndarray | None]:
    """Run the solver, then the never-worse check; also P w for the returned w, or None if not at hand."""
    solver = _newton if method == "newton" else _em
    w, q, f, gap, iterations, history = solver(prob, np.array(init, dtype=np.float64), tol, max_iter, q, q_exact)
    w = w / w.sum()
    converged = gap <= tol
    fallback = None
    better = _better_candidate(prob, w, f, converged)
    if better is not None:
        f, w, fallback = better
        history.append(f)
        q = None
    w.setflags(write=False)
    fit = PriorFit(weights=w, nll=f, iterations=iterations, converged=converged, gap=gap,
                   history=tuple(history), passes=prob.passes, method=method, fallback=fallback,
                   rows_read=prob.rows_read)
    return fit, q


# Bounds on a member's gradient are kept against at most this many reference mixtures; past it, the
# members of the reference held by the fewest are read again at the next gradient.
_MAX_REFERENCES = 4
# Gap over the read members below which the next read also reads every member whose bound does not
# certify: a Newton step from there lands within tol (quadratic convergence), where that read is final.
_CERTIFY_NEAR = 1e-4
# Relative slack on a bounded gradient for the rounding of the cached moments and the ratio statistics.
_BOUND_SLACK = 1e-12
_UNIT_ROUNDOFF = 2.0**-53


class _PrefixPath:
    """Certified optima over growing prefixes of the members, each from the previous one, reading few rows.

    Why: refitting every epoch stamp, even warm, pays for the certificate with a gradient over the whole
    prefix at every step, so a curve of 100 stamps cost ~21 fits. Here each step reads only the members
    that can matter, and the rest are certified from bounds:

    - Gradient bounds from cached moments. A gradient s_i at mixture q equals mean_n a_n rho_n with
      a = P_i / r and rho = r / q for any earlier mixture r at which s_i(r) = mean a and the second
      moment v_i = mean a^2 were read. So s_i(q) <= s_i(r) max rho, and (covariance of a and rho, by
      Cauchy-Schwarz) s_i(q) <= s_i(r) mean rho + sqrt(v_i - s_i(r)^2) sd rho. The statistics of rho cost
      O(N) per reference and no pass over P. Members far from the support keep bounds well below 1 for
      many stamps; only members whose bound exceeds 1 + tol are read again.
    - One read for gradient, second moments and Hessian together (Z = P_R / q, then Z 1 and Z Z^T) over
      R = support + new members + members without a certifying bound, plus the next stamp's new members:
      if this read certifies the stamp, it is also the next stamp's first Newton model, so a stamp whose
      new members do not help costs no read at all, and one that moves the optimum starts stepping at once.
    - One read for the step: q_w = P w and u = P d together (d lives on the rows that can move, which
      hold the support), so q is recomputed from w at every step and never accumulates rounding; its
      distance from P w_new is bounded by the rounding of that one step (see ``_step_drift``) and widens
      the certificate, as the from-scratch fit's recomputation does.

    Steps are the SQP steps of ``_newton`` (exact Hessian over the moving members, simplex QP, exact line
    search, EM if no step lowers f). Certificates are the same bound max_i s_i - 1 over every member of
    the prefix, with exact gradients on the read members and upper bounds on the others, so the result
    equals a from-scratch fit within ``tol``. ``passes`` counts reads (one product of the rows read with
    the tokens) and ``rows_read`` the member rows they read.
    """

    def __init__(self, P: np.ndarray, offset: float, single_nll: np.ndarray):
        self.P, self.offset, self.single_nll = P, offset, single_nll
        n_members = P.shape[0]
        self.w = np.zeros(n_members)
        self.q: np.ndarray | None = None
        self.drift = 0.0  # bound on max_n |q_n - (P w)_n| / q_n from the rounding of the last step
        self.version = 0  # changes whenever q does
        self.s = np.zeros(n_members)  # gradient of each member at its reference mixture
        self.v = np.zeros(n_members)  # second moment of P_i / reference at that mixture
        self.ref = np.full(n_members, -1)  # version of the reference mixture, -1: never read
        self.references: dict[int, np.ndarray] = {}
        self.ratio_stats: dict[int, tuple[float, float, float]] = {}  # reference -> (max, mean, sd) of r/q
        self.model: tuple[int, np.ndarray, np.ndarray] | None = None  # (version, members, Hessian)
        self.passes = 0
        self.rows_read = 0
        self.fitted = 0  # members of the last prefix fitted

    def restart(self, weights: np.ndarray) -> None:
        """Forget q and every cached gradient: continue from ``weights`` on the first members."""
        self.__init__(self.P, self.offset, self.single_nll)
        self.w[: len(weights)] = weights

    def nll(self, q: np.ndarray) -> float:
        with np.errstate(divide="ignore"):
            return -(float(np.log(q).mean()) + self.offset)

    def _chunk(self, rows: int) -> int:
        return max(1024, (1 << 17) // max(rows, 1))

    def _mix(self, rows: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """P w, P d and P |d| over ``rows`` (which hold the support of w and of d) in one read."""
        self.passes += 1
        self.rows_read += len(rows)
        n_tokens = self.P.shape[1]
        coef = np.stack([self.w[rows], d[rows], np.abs(d[rows])])
        out = np.empty((3, n_tokens))
        chunk = self._chunk(len(rows))
        for start in range(0, n_tokens, chunk):
            stop = min(n_tokens, start + chunk)
            out[:, start:stop] = coef @ self.P[rows, start:stop]
        return out[0], out[1], out[2]

    def _read(self, model_rows: np.ndarray, checked_rows: np.ndarray,
              mix: np.ndarray | None = None) -> np.ndarray | None:
        """At the current q, in one read: gradient, second moment and Hessian of ``model_rows`` (the
        members a step may move), gradient and second moment of ``checked_rows`` (members read only for
        the certificate, whose Hessian entries no step needs); cached. With ``mix`` (one coefficient per
        checked row), also returns P^T mix over the checked rows from the same read."""
        rows = np.concatenate([model_rows, checked_rows])
        k = len(model_rows)
        self.passes += 1
        self.rows_read += len(rows)
        n_tokens = self.P.shape[1]
        s = np.zeros(len(rows))
        v = np.zeros(len(rows))
        H = np.zeros((k, k))
        mixed = None if mix is None else np.empty(n_tokens)
        chunk = self._chunk(len(rows))
        for start in range(0, n_tokens, chunk):
            stop = min(n_tokens, start + chunk)
            Z = self.P[rows, start:stop]
            if mix is not None:
                mixed[start:stop] = mix @ Z[k:]
            Z = Z / self.q[start:stop]
            s += Z.sum(axis=1)
            H += Z[:k] @ Z[:k].T
            if len(rows) > k:
                v[k:] += np.einsum("ij,ij->i", Z[k:], Z[k:])
        s /= n_tokens
        H /= n_tokens
        v[:k] = np.diag(H)
        v[k:] /= n_tokens
        self.s[rows], self.v[rows], self.ref[rows] = s, v, self.version
        self.references[self.version] = self.q
        if k:
            self.model = (self.version, model_rows, H)
        live = set(self.ref[self.ref >= 0].tolist())
        for version in [v for v in self.references if v not in live]:
            del self.references[version]
            self.ratio_stats.pop(version, None)
        return mixed

    def _bounds(self, m: int) -> np.ndarray:
        """Upper bounds on the gradients of the first m members at the current q (exact where read at q).

        inf for a member never read, or held by a reference dropped to keep at most _MAX_REFERENCES.
        """
        bound = np.full(m, math.inf)
        ref = self.ref[:m]
        current = ref == self.version
        bound[current] = self.s[:m][current]
        older = sorted({int(r) for r in ref[(ref >= 0) & ~current]}, key=lambda r: (np.count_nonzero(ref == r), r))
        for r in older[max(0, len(older) - _MAX_REFERENCES):]:
            if r not in self.ratio_stats:
                rho = self.references[r] / self.q
                mean = float(rho.mean())
                self.ratio_stats[r] = (float(rho.max()), mean, float(np.sqrt(np.mean((rho - mean) ** 2))))
            peak, mean, sd = self.ratio_stats[r]
            held = ref == r
            s, v = self.s[:m][held], self.v[:m][held]
            spread = np.sqrt(np.maximum(v - s * s, 0.0) + 4.0 * _UNIT_ROUNDOFF * v)
            bound[held] = np.minimum(s * peak, s * mean + spread * sd) * (1.0 + _BOUND_SLACK)
        return bound

    def _set_q(self, q: np.ndarray, drift: float) -> None:
        self.q, self.drift = q, drift
        self.version += 1
        self.ratio_stats = {}

    def fit(self, m: int, m_next: int, tol: float, max_iter: int) -> tuple[PriorFit, np.ndarray]:
        """The certified optimum over members [0, m); [m, m_next) are read ahead for the next call."""
        passes, rows_read = self.passes, self.rows_read
        w = self.w
        if not np.any(w[:m] > 0):
            w[:m] = 1.0 / m
        for _ in range(2):
            if self.q is not None and np.all(self.q > 0):
                break
            if self.q is not None:  # no member with weight covers some token: spread half the weight
                w[:m] = 0.5 * w[:m] + 0.5 / m
            support = np.flatnonzero(w)
            self._set_q(self._mix(support, np.zeros_like(w))[0], (len(support) + 2) * _UNIT_ROUNDOFF)
        f = self.nll(self.q)
        history = [f]
        new = np.arange(self.fitted, m) if self.fitted else np.zeros(0, dtype=int)
        if new.size:
            # The new members' share first: the best mix of the previous optimum and their even blend (exact
            # line search, one read of their rows). When they are much better the Newton model at the old
            # q is poor along that direction (the share can be most of the weight), so this saves steps.
            blend = np.zeros_like(w)
            blend[new] = 1.0 / new.size
            mixed = None
            if not np.all(self.ref[new] == self.version):
                mixed = self._read(np.zeros(0, dtype=int), new, blend[new])
            # The slope of f along the blend at 0 is 1 - blend . s: when it is not negative the line search
            # would stay at 0, and the gradients just read (or read ahead) settle it without the product.
            t = 0.0
            if float(blend[new] @ self.s[new]) > 1.0:
                if mixed is None:
                    mixed = self._mix(new, blend)[1]
                t = _line_search(self.q, mixed - self.q)
            if t > 0.0:
                new_q = (1.0 - t) * self.q + t * mixed
                if np.all(new_q > 0):
                    drift = self.drift + _step_drift(new.size, (1.0 - t) * self.q, t, mixed, new_q)
                    w[:] = (1.0 - t) * w + t * blend
                    self._set_q(new_q, drift)
                    f = self.nll(new_q)
                    history.append(f)
        self.fitted = m
        iterations = 0
        ahead = np.arange(m, m_next)
        last_exact_gap = math.inf  # over the members read at the last read
        while True:
            # The step's members: the support, the never-read, and those whose last gradient asked for weight.
            model_rows = np.flatnonzero((w[:m] > 0) | (self.ref[:m] < 0) | (self.s[:m] >= 1.0 - _ENTER_MARGIN))
            bound = self._bounds(m)
            current = self.ref[:m] == self.version
            checked = np.zeros(0, dtype=int)
            if last_exact_gap < _CERTIFY_NEAR:
                checked = np.setdiff1d(np.flatnonzero((bound > 1.0 + tol) & ~current), model_rows)
            modelled = self.model is not None and self.model[0] == self.version
            if not (modelled and np.isin(model_rows, self.model[1]).all()):
                self._read(np.concatenate([model_rows, ahead]), checked)
            elif checked.size:
                self._read(np.zeros(0, dtype=int), checked)
            if checked.size or not modelled:
                bound = self._bounds(m)
                current = self.ref[:m] == self.version
            last_exact_gap = max(0.0, float(self.s[:m][current].max()) - 1.0)
            gap = (1.0 + max(0.0, float(bound.max()) - 1.0)) * (1.0 + self.drift) - 1.0
            if gap <= tol or iterations >= max_iter:
                break
            if (1.0 + last_exact_gap) * (1.0 + self.drift) - 1.0 <= tol:
                continue  # only bounds stand in the way: the next pass reads those members at this q
            _, members, H = self.model
            s = self.s
            moving = (members < m) & ((w[members] > 0) | (s[members] >= 1.0 - _ENTER_MARGIN))
            rows, local = members[moving], np.flatnonzero(moving)
            d = np.zeros_like(w)
            d[rows] = _simplex_qp(H[np.ix_(local, local)], -s[rows], w[rows])
            qw, u, u_abs = self._mix(rows, d)
            f = self.nll(qw)
            t = _line_search(qw, u)
            accepted = False
            if t > 0.0:
                new_w = w + t * d
                if t == 1.0:
                    new_w[d == -w] = 0.0
                new_q = qw + t * u
                new_f = self.nll(new_q)
                accepted = bool(np.all(new_w >= 0) and np.all(new_q > 0)
                                and new_f <= f + _ROUNDING * max(1.0, abs(f)))
            if not accepted:
                # No usable step from the model: an EM step over the read members (which hold the support).
                em = np.zeros_like(w)
                em[rows] = w[rows] * s[rows]
                em /= em.sum()
                d = em - w
                qw, u, u_abs = self._mix(rows, d)
                t, new_w, new_q = 1.0, em, qw + u
                new_f = self.nll(new_q)
                if not (np.all(new_q > 0) and new_f <= f + _ROUNDING * max(1.0, abs(f))):
                    break
            w[:] = new_w
            self._set_q(new_q, _step_drift(len(rows), qw, t, u_abs, new_q))
            f = new_f
            history.append(f)
            iterations += 1
        weights = w[:m] / w[:m].sum()
        fit = PriorFit(weights=weights, nll=f, iterations=iterations, converged=gap <= tol, gap=gap,
                       history=tuple(history), passes=self.passes - passes, method="newton",
                       rows_read=self.rows_read - rows_read)
        return fit, self.q


def _step_drift(rows: int, qw: np.ndarray, t: float, u_abs: np.ndarray, q: np.ndarray) -> float:
    """Bound on max_n |q_n - (P w_new)_n| / q_n for q = q_w + t u computed in float64.

    q_w and u are sums of ``rows`` products each, so each is within rows * unit roundoff of its exact
    value relative to the sum of absolute terms (q_w and P|d|); rounding w + t d adds one unit roundoff
    per weight, and the final sum one more.
    """
    return (rows + 3) * _UNIT_ROUNDOFF * float(np.max((qw + t * u_abs) / q))


def _check_settings(tol: float, max_iter: int, method: str) -> None:
    if tol <= 0 or max_iter < 0:
        raise SlowrunError(f"tol must be > 0 and max_iter >= 0, got tol={tol}, max_iter={max_iter}")
    if method not in METHODS:
        raise SlowrunError(f"method must be one of {METHODS}, got {method!r}")


def _initial(init, n_members: int) -> np.ndarray:
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
    _check_settings(tol, max_iter, method)
    P, offset, single_nll = _scaled(_as_matrix(logp_fit, "logp_fit"))
    return _fit(_Problem(P, offset, single_nll), _initial(init, P.shape[0]), tol, max_iter, method)[0]


def _subproblem(P: np.ndarray, offset: float, single_nll: np.ndarray, rows, members: list,
                subset_peak: np.ndarray | None = None) -> _Problem:
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
        return _Problem(sub, offset, single_nll[rows])
    picked = range(P.shape[0])[rows] if isinstance(rows, slice) else rows
    own, own_offset, own_single = _scaled(_as_matrix([members[i] for i in picked], "logp_fit"))
    return _Problem(own, own_offset, own_single)


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
    ``refit=True`` the weights among the kept K are fit again on the fitness data, starting from those
    renormalised weights, which can only lower the fitness NLL. Validation data is only ever scored,
    never used to choose.
    """
    fit_members = _member_list(logp_fit)
    L = _as_matrix(logp_fit, "logp_fit")
    val_members = _member_list(logp_val)
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
        P, offset, single_nll = _scaled(L)
    if prior is None:
        prior = _fit(_Problem(P, offset, single_nll), _initial(None, n_members), tol, max_iter, "newton")[0]
    order = _ranked(prior.weights)
    points = []
    for k in ks:
        members = order[:k]
        weights = top_k(prior.weights, k)[members]
        if refit:
            sub = _fit(_subproblem(P, offset, single_nll, members, fit_members), weights, tol, max_iter,
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

    Prefixes share the whole set's rescaled matrix and go through one ``_PrefixPath``. A prefix whose
    per-token best member sits more than _SUBSET_RESCALE_NATS below the whole set's peak would underflow
    there; it is rescaled on its own and fit by ``_fit`` from the previous optimum, and the path then
    continues from that fit's weights with its caches cleared (rare: only the first stamps of a run can
    be that far below its later snapshots).
    """
    path = _PrefixPath(P, offset, single_nll)
    prefix_peak = np.zeros(P.shape[1])
    done = 0
    previous: np.ndarray | None = None
    for index, m in enumerate(sizes):
        m_next = sizes[index + 1] if index + 1 < len(sizes) else m
        np.maximum(prefix_peak, P[done:m].max(axis=0), out=prefix_peak)
        done = m
        if float(prefix_peak.min()) >= math.exp(-_SUBSET_RESCALE_NATS):
            fit, _ = path.fit(m, m_next, tol, max_iter)
            prob = _Problem(P[:m], offset, single_nll[:m])
        else:
            prob = _subproblem(P, offset, single_nll, slice(0, m), members, prefix_peak)
            init = _initial(None, m) if previous is None else np.concatenate([previous, np.zeros(m - len(previous))])
            fit, _ = _fit(prob, init, tol, max_iter, "newton")
            path.restart(np.asarray(fit.weights))
        better = _better_candidate(prob, np.asarray(fit.weights), fit.nll, fit.converged)
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

    The stamps are visited in order along one ``_PrefixPath`` (see it for why each step reads only a
    few members): each fit starts from the previous stamp's optimum mixed with an even blend of the new
    snapshots, in the proportion an exact line search picks (zero when they do not help, decided from
    their gradients without a product), so a stamp costs a few Newton steps over the support instead of a
    fit, and at most the new snapshots' rows when they do not help. Every stamp is certified to ``tol``
    over all its snapshots, so the curve equals the from-scratch one within it. ``stamps`` chooses the
    epochs reported (each must be a snapshot's stamp; e.g. :func:`curve_stamps`); None reports every
    distinct stamp.
    """
    epochs = [float(e) for e in snapshot_epochs]
    fit_members = _member_list(logp_fit)
    val_members = _member_list(logp_val)
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
    P, offset, single_nll = _scaled(_as_matrix(sorted_members, "logp_fit"))
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
