"""Epochs to a target: how many epochs each method needs to reach a chosen validation loss.

Slowrun's claims are of this form (q0: the loss of a 256-epoch ensemble reached at about 56 epochs,
4.6x fewer). For each method of a table the board reads the loss-against-epochs curve of its longest
run (the ranked entry with the largest epoch budget, its seeds together: runs at other budgets follow
other schedules, so their curves are not pieced together), and puts every seed on one standard grid:

- the grid is 2^(k/4) epochs for whole k (four points per doubling, the same for every method and track),
  inside the epochs every seed's curve covers, plus the last epoch they all reached, so a curve keeps
  its end; a seed's loss at a grid epoch is read off its curve linearly in log2(epochs) between the two
  stamps around it (never beyond its first or last stamp);
- at each grid epoch the curve is the seeds' mean with its Student-t interval (none for one seed).

A target is reached where the mean curve first comes down to it: between the grid epochs on either
side, linearly in log2(epochs). Where the curve is already at or below the target at its first epoch
the board says "≤ that epoch", where it never comes down to it "> its last epoch": bounds, not
numbers. The same reading of the interval's lower and upper curves gives the earliest and latest
epoch the seeds allow.

Targets: each reference method's best along its own curve (`REFERENCE_METHODS`: the naive ensemble,
the baseline q0 is measured against), and Slowrun's published baseline for the same track and class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from leaderboard.entries import Entry
from leaderboard.stats import mean_interval
from leaderboard.tables import TrackTable

STEPS_PER_DOUBLING = 4
REFERENCE_METHODS = ("naive_ensemble",)
_EDGE = 1e-9  # relative: a grid epoch this close to a curve's end is on it


@dataclass(frozen=True)
class MethodCurve:
    """One method's loss against epochs on the standard grid, over the seeds of one entry."""

    method: str
    entry: Entry  # the entry whose runs' curves these are
    epochs: tuple[float, ...]
    mean: tuple[float, ...]
    low: tuple[float, ...]  # NaN where there is no interval (a single seed)
    high: tuple[float, ...]

    @property
    def n(self) -> int:
        return self.entry.n


@dataclass(frozen=True)
class Crossing:
    """Where a curve reaches a target: an epoch count, or a bound ("≤" reached by the first epoch, ">" never)."""

    epochs: float
    relation: str = "="  # "=", "≤" or ">"

    @property
    def exact(self) -> bool:
        return self.relation == "="

    @property
    def text(self) -> str:
        number = f"{self.epochs:.1f}"
        return number if self.exact else f"{self.relation} {number}"


@dataclass(frozen=True)
class Target:
    label: str  # fixed words and a method name (escaped by the template)
    loss: float
    source: str  # where the number comes from, for the page
    method: str | None = None  # the reference method whose best it is; None for a published result


@dataclass(frozen=True)
class TargetReading:
    """One method against one target: the crossing of its mean curve and of its interval's two curves."""

    target: Target
    central: Crossing
    earliest: Crossing | None  # the lower curve's crossing; None without an interval
    latest: Crossing | None  # the upper curve's

    @property
    def interval_text(self) -> str | None:
        if self.earliest is None or self.latest is None:
            return None
        return f"{self.earliest.text} to {self.latest.text}"


def epoch_grid(first: float, last: float, steps: int = STEPS_PER_DOUBLING) -> tuple[float, ...]:
    """2^(k/steps) for whole k with first <= epochs <= last, then `last` itself if it is not on the grid."""
    if not (0 < first <= last):
        return ()
    low = math.ceil(math.log2(first) * steps - _EDGE * steps)
    high = math.floor(math.log2(last) * steps + _EDGE * steps)
    grid = [2.0 ** (k / steps) for k in range(low, high + 1)]
    grid = [min(max(e, first), last) for e in grid]  # a point within _EDGE of an end is the end
    if not grid or not math.isclose(grid[-1], last, rel_tol=_EDGE):
        grid.append(last)
    return tuple(grid)


def value_at(points: list[tuple[float, float]], epochs: float) -> float | None:
    """The curve's loss at `epochs`, linear in log2(epochs) between the stamps around it; None outside them."""
    if not points or epochs < points[0][0] * (1 - _EDGE) or epochs > points[-1][0] * (1 + _EDGE):
        return None
    for (e0, l0), (e1, l1) in zip(points, points[1:]):
        if epochs <= e1 * (1 + _EDGE):
            if e1 == e0:
                return l1
            share = (math.log2(max(epochs, e0)) - math.log2(e0)) / (math.log2(e1) - math.log2(e0))
            return l0 + min(max(share, 0.0), 1.0) * (l1 - l0)
    return points[-1][1]


def run_curve(record_curve: list[dict]) -> list[tuple[float, float]]:
    """A record's `curve` as sorted (epochs, loss) pairs, leaving out points that are missing or not finite."""
    kept = {}
    for point in record_curve:
        epochs, loss = point.get("epochs"), point.get("val_loss")
        if isinstance(epochs, (int, float)) and isinstance(loss, (int, float)) and not isinstance(loss, bool) \
                and math.isfinite(epochs) and math.isfinite(loss) and epochs > 0:
            kept[float(epochs)] = float(loss)
    return sorted(kept.items())


def _longest_entry(entries: list[Entry]) -> Entry:
    return min(entries, key=lambda e: (-e.budget_epochs, e.mean, e.order))


def method_curve(entry: Entry, curves: list[list[tuple[float, float]]], confidence: float) -> MethodCurve | None:
    """The seeds' curves of one entry on the standard grid, over the epochs every seed covers."""
    curves = [c for c in curves if c]
    if len(curves) != entry.n:
        return None  # a seed without a curve: the mean would be over other seeds at other epochs
    grid = epoch_grid(max(c[0][0] for c in curves), min(c[-1][0] for c in curves))
    if not grid:
        return None
    means, lows, highs = [], [], []
    for epochs in grid:
        interval = mean_interval([value_at(c, epochs) for c in curves], confidence)
        means.append(interval.mean)
        lows.append(interval.low if interval.low is not None else math.nan)
        highs.append(interval.high if interval.high is not None else math.nan)
    return MethodCurve(entry.method, entry, grid, tuple(means), tuple(lows), tuple(highs))


def method_curves(table: TrackTable, curves_of: dict[str, list[tuple[float, float]]],
                  confidence: float) -> list[MethodCurve]:
    """Each method's curve from its longest ranked entry; `curves_of` maps a run's relpath to its curve."""
    by_method: dict[str, list[Entry]] = {}
    for entry in table.ranked:
        by_method.setdefault(entry.method, []).append(entry)
    found = []
    for method in sorted(by_method):
        entry = _longest_entry(by_method[method])
        curve = method_curve(entry, [curves_of.get(run.relpath, []) for run in entry.runs], confidence)
        if curve is not None:
            found.append(curve)
    return found


def crossing(epochs: tuple[float, ...], values: tuple[float, ...], target: float) -> Crossing | None:
    """Where the values first come down to the target, read between grid points in log2(epochs)."""
    if not epochs or any(math.isnan(v) for v in values):
        return None
    if values[0] <= target:
        return Crossing(epochs[0], "≤")
    for (e0, v0), (e1, v1) in zip(zip(epochs, values), zip(epochs[1:], values[1:])):
        if v1 <= target:
            share = (v0 - target) / (v0 - v1)
            return Crossing(2.0 ** (math.log2(e0) + share * (math.log2(e1) - math.log2(e0))))
    return Crossing(epochs[-1], ">")


def read_target(curve: MethodCurve, target: Target) -> TargetReading:
    central = crossing(curve.epochs, curve.mean, target.loss)
    return TargetReading(target, central, crossing(curve.epochs, curve.low, target.loss),
                         crossing(curve.epochs, curve.high, target.loss))


def targets_for(table: TrackTable, curves: list[MethodCurve], published: list[TrackTable]) -> list[Target]:
    """The reference methods' best along their curves, then the published baseline of the same track and class."""
    targets = []
    for curve in curves:
        if curve.method in REFERENCE_METHODS:
            best = min(range(len(curve.mean)), key=lambda i: (curve.mean[i], curve.epochs[i]))
            targets.append(Target(f"{curve.method}'s best", curve.mean[best],
                                  f"the lowest mean of {curve.method}'s curve: {curve.mean[best]:.4f} at "
                                  f"{curve.epochs[best]:.1f} epochs (n={curve.n})", curve.method))
    for other in published:
        if other.reported and other.track == table.track and other.compute_class == table.compute_class:
            baseline = min(other.entries, key=lambda e: e.order)
            if baseline.mean is not None:
                targets.append(Target("the published baseline", baseline.mean,
                                      f"Slowrun's first published {other.compute_class} result: {baseline.method}"))
    return targets


@dataclass(frozen=True)
class EpochsTable:
    curves: tuple[MethodCurve, ...]
    targets: tuple[Target, ...]
    readings: dict[tuple[str, str], TargetReading]  # by (method, target label)

    def reading(self, method: str, target: Target) -> TargetReading:
        return self.readings[(method, target.label)]

    def fewer(self, method: str, target: Target) -> float | None:
        """How many times fewer epochs than the method the target comes from, where both are numbers."""
        if target.method is None:
            return None
        mine, theirs = self.reading(method, target).central, self.reading(target.method, target).central
        if not (mine.exact and theirs.exact):
            return None
        return theirs.epochs / mine.epochs


def epochs_table(table: TrackTable, curves_of: dict[str, list[tuple[float, float]]], confidence: float,
                 published: list[TrackTable]) -> EpochsTable | None:
    """Every method's curve and its readings against the table's targets; None without any curve."""
    if table.reported:
        return None
    curves = method_curves(table, curves_of, confidence)
    if not curves:
        return None
    targets = targets_for(table, curves, published)
    readings = {(c.method, t.label): read_target(c, t) for c in curves for t in targets}
    return EpochsTable(tuple(curves), tuple(targets), readings)
