"""Plot specs of a whole table: the record progression over time and the loss-against-epochs frontier.

Both are drawn by leaderboard.plots like the run plots (same reproducible SVG, no record string drawn).
"""

from __future__ import annotations

from datetime import date

from leaderboard.entries import Entry
from leaderboard.plots import PlotSpec, Series
from leaderboard.tables import TrackTable


def _day(stamp: str) -> date:
    return date.fromisoformat(stamp[:10])


def progression_plot_spec(table: TrackTable) -> PlotSpec | None:
    """Every ranked entry's mean as a dot against its date; the record as a step line through the history."""
    if not table.history:
        return None
    start = min(_day(e.created) for e in table.ranked)
    dots = sorted(((_day(e.created) - start).days, e.mean) for e in table.ranked)
    step_x: list[float] = []
    step_y: list[float] = []
    for step in table.history:
        x = float((_day(step.entry.created) - start).days)
        if step_y:
            step_x.append(x)
            step_y.append(step_y[-1])
        step_x.append(x)
        step_y.append(step.entry.mean)
    last = float(max(x for x, _ in dots))
    if last > step_x[-1]:
        step_x.append(last)
        step_y.append(step_y[-1])
    return PlotSpec(f"progression-{table.anchor}", "record progression: validation loss against date",
                    f"days since {start.isoformat()}", "val loss (nats/token)",
                    (Series(tuple(step_x), tuple(step_y), line=True, points=len(step_x) == 1),
                     Series(tuple(float(x) for x, _ in dots), tuple(y for _, y in dots), line=False, points=True)))


def frontier_points(table: TrackTable) -> list[tuple[str, float, Entry]]:
    """(method, budget in epochs, best entry of that method at that budget), by method then budget."""
    best: dict[tuple[str, float], Entry] = {}
    for entry in table.ranked:
        key = (entry.method, entry.budget_epochs)
        if key not in best or entry.mean < best[key].mean:
            best[key] = entry
    return sorted(((e.method, e.budget_epochs, e) for e in best.values()), key=lambda p: (p[0], p[1], p[2].order))


def frontier_plot_spec(table: TrackTable) -> PlotSpec | None:
    """Dots: each method's best entry at each budget; line: the best of any method at each budget."""
    points = [(budget, entry.mean) for _, budget, entry in frontier_points(table) if budget > 0]
    if not points:
        return None
    overall: dict[float, float] = {}
    for budget, loss in points:
        overall[budget] = min(loss, overall.get(budget, loss))
    line = sorted(overall.items())
    dots = sorted(points)
    return PlotSpec(f"frontier-{table.anchor}", "validation loss against epoch budget, best entry per method",
                    "epoch budget", "val loss (nats/token)",
                    (Series(tuple(x for x, _ in line), tuple(y for _, y in line), line=True, points=len(line) == 1),
                     Series(tuple(x for x, _ in dots), tuple(y for _, y in dots), line=False, points=True)))
