"""The learned prior over ensemble members, and what the harness reports from it.

- :mod:`~harness.eval.prior.solver`: the certified convex fit of one set of members (Newton-type steps on
  the simplex, EM kept for reference), top-K truncations;
- :mod:`~harness.eval.prior.prefix_path`: certified fits over growing prefixes of the members, each
  warm-started from the last and reading few rows (the curve's engine);
- :mod:`~harness.eval.prior.sweeps`: the K sweep (loss against inference budget) and the
  loss-against-epochs curve.

Who may import it: evaluation (:mod:`harness.eval.evaluation`), studies and benchmarks. It is pure numpy
over log-probability matrices: it reads no files and imports nothing of the harness but
:mod:`harness.eval.ensemble` and :mod:`harness.errors`. The names below are its interface.
"""

from harness.eval.prior.solver import DEFAULT_MAX_ITER, DEFAULT_TOL, METHODS, PriorFit, default_ks, fit_prior, top_k
from harness.eval.prior.sweeps import CURVE_POINTS, CurvePoint, KSweepPoint, curve_stamps, k_sweep, loss_curve

__all__ = ["CURVE_POINTS", "DEFAULT_MAX_ITER", "DEFAULT_TOL", "METHODS", "CurvePoint", "KSweepPoint", "PriorFit",
           "curve_stamps", "default_ks", "fit_prior", "k_sweep", "loss_curve", "top_k"]
