"""The statistics the board ranks and accepts records with: mean, Student-t interval, one-sided Welch test.

The board must not depend on scipy at run time, so the Student t distribution is computed here from the
regularized incomplete beta function (continued fraction, evaluated by the modified Lentz method):
for t >= 0, P(T <= t) = 1 - I_x(df/2, 1/2) / 2 with x = df / (df + t^2). tests/leaderboard/test_stats.py
checks every function against scipy.

Seed-to-seed noise on Slowrun is about 1e-4 nats while record gains are 2e-3 to 2e-2, so a gain is only
called significant when a one-sided Welch test rejects "no improvement" at the board's threshold; with a
single run on either side there is no variance to test with, and the functions say so (None).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

_EPS = 1e-15
_TINY = 1e-300
_MAX_ITERATIONS = 500


def mean(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("the mean of no values is undefined")
    return math.fsum(values) / len(values)


def sample_variance(values: Sequence[float]) -> float:
    """Unbiased (n - 1) variance; needs two values."""
    if len(values) < 2:
        raise ValueError("a sample variance needs at least two values")
    centre = mean(values)
    return math.fsum((v - centre) ** 2 for v in values) / (len(values) - 1)


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, _MAX_ITERATIONS + 1):
        m2 = 2 * m
        for numerator in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                          -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            h *= d * c
        if abs(d * c - 1.0) < _EPS:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if a <= 0 or b <= 0:
        raise ValueError(f"incomplete beta needs a, b > 0, got a={a}, b={b}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"incomplete beta needs 0 <= x <= 1, got {x}")
    if x == 0.0 or x == 1.0:
        return x
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):  # the fraction converges fast on this side; use symmetry on the other
        return front * _beta_continued_fraction(a, b, x) / a
    return 1.0 - front * _beta_continued_fraction(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` (> 0, not necessarily whole) degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


@lru_cache(maxsize=256)  # a board asks for the same few (level, n - 1) pairs hundreds of times
def student_t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p, by bisection on the CDF (monotone, so this cannot miss)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"a quantile needs 0 < p < 1, got {p}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -student_t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while student_t_cdf(high, df) < p:
        high *= 2.0
    for _ in range(200):
        middle = 0.5 * (low + high)
        if student_t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
        if high - low <= 1e-13 * max(1.0, high):
            break
    return 0.5 * (low + high)


@dataclass(frozen=True)
class Interval:
    """Mean of n values with its two-sided Student-t confidence interval (None for n = 1)."""

    mean: float
    n: int
    low: float | None
    high: float | None
    level: float

    @property
    def half_width(self) -> float | None:
        return None if self.high is None else self.high - self.mean


def mean_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    centre = mean(values)
    n = len(values)
    if n < 2:
        return Interval(centre, n, None, None, level)
    half = student_t_quantile(0.5 + level / 2.0, n - 1) * math.sqrt(sample_variance(values) / n)
    return Interval(centre, n, centre - half, centre + half, level)


@dataclass(frozen=True)
class WelchTest:
    """One-sided Welch test of H1: mean(new) < mean(old)."""

    t: float  # (mean(old) - mean(new)) / standard error: positive when new is lower
    df: float  # Welch-Satterthwaite degrees of freedom
    p_value: float


def welch_one_sided(new: Sequence[float], old: Sequence[float]) -> WelchTest | None:
    """None when either side has a single value (no variance to test with).

    Both samples without any spread (every value equal within each side) make the standard error 0:
    then a lower new mean is certain (p = 0) and anything else is not an improvement (p = 1).
    """
    if len(new) < 2 or len(old) < 2:
        return None
    v_new, v_old = sample_variance(new) / len(new), sample_variance(old) / len(old)
    gain = mean(old) - mean(new)
    se2 = v_new + v_old
    if se2 == 0.0:
        return WelchTest(math.inf if gain > 0 else -math.inf, math.inf, 0.0 if gain > 0 else 1.0)
    t = gain / math.sqrt(se2)
    df = se2 ** 2 / (v_new ** 2 / (len(new) - 1) + v_old ** 2 / (len(old) - 1))
    return WelchTest(t, df, student_t_cdf(-t, df))
