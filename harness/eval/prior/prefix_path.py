"""Certified prior fits over growing prefixes of the members, each warm-started from the last.

Warm starts: ``fit_prior(init=...)`` starts from given weights. ``loss_curve`` fits every epoch stamp
along one path over the growing prefixes of the members (``PrefixPath``): each stamp starts from the
previous optimum plus the new snapshots' best share (line search), steps only on the members that can
move, and certifies the members far from the support from bounds on their gradients (cached moments at
an earlier mixture) instead of reading them again. A stamp whose new snapshots cannot help costs at most
their own rows. Every stamp is certified to the same tolerance over all its members, so the results
equal from-scratch fits within it.

It is the curve's engine (:func:`harness.eval.prior.sweeps.loss_curve`) and builds on the solver's
steps (:mod:`harness.eval.prior.solver`).
"""


from __future__ import annotations

import math

import numpy as np

from harness.eval.prior.solver import ENTER_MARGIN, ROUNDING, PriorFit, line_search, simplex_qp

# Bounds on a member's gradient are kept against at most this many reference mixtures; past it, the
# members of the reference held by the fewest are read again at the next gradient.
_MAX_REFERENCES = 4
# Gap over the read members below which the next read also reads every member whose bound does not
# certify: a Newton step from there lands within tol (quadratic convergence), where that read is final.
_CERTIFY_NEAR = 1e-4
# Relative slack on a bounded gradient for the rounding of the cached moments and the ratio statistics.
_BOUND_SLACK = 1e-12
_UNIT_ROUNDOFF = 2.0**-53


class PrefixPath:
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
                t = line_search(self.q, mixed - self.q)
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
            model_rows = np.flatnonzero((w[:m] > 0) | (self.ref[:m] < 0) | (self.s[:m] >= 1.0 - ENTER_MARGIN))
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
            moving = (members < m) & ((w[members] > 0) | (s[members] >= 1.0 - ENTER_MARGIN))
            rows, local = members[moving], np.flatnonzero(moving)
            d = np.zeros_like(w)
            d[rows] = simplex_qp(H[np.ix_(local, local)], -s[rows], w[rows])
            qw, u, u_abs = self._mix(rows, d)
            f = self.nll(qw)
            t = line_search(qw, u)
            accepted = False
            if t > 0.0:
                new_w = w + t * d
                if t == 1.0:
                    new_w[d == -w] = 0.0
                new_q = qw + t * u
                new_f = self.nll(new_q)
                accepted = bool(np.all(new_w >= 0) and np.all(new_q > 0)
                                and new_f <= f + ROUNDING * max(1.0, abs(f)))
            if not accepted:
                # No usable step from the model: an EM step over the read members (which hold the support).
                em = np.zeros_like(w)
                em[rows] = w[rows] * s[rows]
                em /= em.sum()
                d = em - w
                qw, u, u_abs = self._mix(rows, d)
                t, new_w, new_q = 1.0, em, qw + u
                new_f = self.nll(new_q)
                if not (np.all(new_q > 0) and new_f <= f + ROUNDING * max(1.0, abs(f))):
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
