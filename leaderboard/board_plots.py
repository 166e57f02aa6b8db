"""Plot specs of a whole table: the record progression over time and the loss-against-epochs frontier.

Both are drawn by leaderboard.plots like the run plots (same reproducible SVG, no record string drawn).
Every plot of a table gives a method the same colour and marker (`method_styles`), and its legend is
HTML beside the figure (`Legend`): method names are record strings, so they are written by the
autoescaping template, never into the SVG. A table with more methods than there are distinct styles
shows the best ones in colour and the rest as one grey "other methods".

The progression's x axis fits its data: when every entry was complete on the same day, a date axis
would be a single vertical line, so the entries are placed in the order they were complete instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date

from leaderboard.entries import Entry
from leaderboard.plots import PlotSpec, Series
from leaderboard.tables import TrackTable
from leaderboard.targets import EpochsTable

# Ten colours told apart by most readers (matplotlib's tab10 without its grey), each with two markers.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
           "#393b79")
MARKERS = ("o", "s")
OTHER_COLOR = "#9aa3ad"
RECORD_COLOR = "#222222"
TARGET_COLORS = ("#555555", "#a0a0a0")
GLYPHS = {"o": "●", "s": "■", "^": "▲", "D": "◆", "None": "—"}
OTHER_METHODS = "other methods"


@dataclass(frozen=True)
class MethodStyle:
    """How one method (or the lumped others, or the record line) is drawn in every plot of its table."""

    label: str  # a method name, OTHER_METHODS, or a fixed description of a line
    color: str
    marker: str
    line: bool = False  # the legend shows a line rather than a marker
    dashed: bool = False

    @property
    def glyph(self) -> str:
        if self.dashed:
            return "╌"
        return "—" if self.line else GLYPHS[self.marker]


@dataclass(frozen=True)
class BoardPlot:
    """A table plot: what to draw, the legend to write beside it, and a sentence about its axis."""

    spec: PlotSpec
    legend: tuple[MethodStyle, ...]
    axis_note: str = ""


def _best_means(table: TrackTable) -> dict[str, float]:
    best: dict[str, float] = {}
    for entry in table.ranked:
        if entry.mean is not None:
            best[entry.method] = min(entry.mean, best.get(entry.method, math.inf))
    return best


def method_styles(table: TrackTable) -> dict[str, MethodStyle]:
    """A style per method of the table: methods by their best mean (then the unranked, by name), the first
    len(PALETTE) * len(MARKERS) each a colour and marker of their own, every later one the grey of the others.

    Decided once per table, so the same method has the same colour in each of the table's plots.
    """
    best = _best_means(table)
    methods = sorted(best, key=lambda m: (best[m], m))
    methods += sorted({e.method for e in table.entries} - set(best))
    styles: dict[str, MethodStyle] = {}
    distinct = len(PALETTE) * len(MARKERS)
    for index, method in enumerate(methods):
        if index < distinct:
            styles[method] = MethodStyle(method, PALETTE[index % len(PALETTE)], MARKERS[index // len(PALETTE)])
        else:
            styles[method] = MethodStyle(OTHER_METHODS, OTHER_COLOR, "o")
    return styles


def _legend(styles: dict[str, MethodStyle], methods: set[str], *extra: MethodStyle) -> tuple[MethodStyle, ...]:
    """The styles of the methods a plot shows, in style order, each once (the others once), then `extra`."""
    shown: list[MethodStyle] = []
    for method, style in styles.items():
        if method in methods and style not in shown:
            shown.append(style)
    return tuple(shown) + extra


def _grouped(points: list[tuple[str, float, float]], styles: dict[str, MethodStyle]) -> dict[MethodStyle, list]:
    """(method, x, y) points grouped by style, in style order (the legend's)."""
    groups: dict[MethodStyle, list] = {}
    for style in dict.fromkeys(styles.values()):
        members = sorted((x, y) for method, x, y in points if styles[method] == style)
        if members:
            groups[style] = members
    return groups


# --- record progression ---------------------------------------------------------------------------

def _day(stamp: str) -> date:
    return date.fromisoformat(stamp[:10])


def timeline(entries: list[Entry]) -> tuple[dict[str, float], str, bool]:
    """Each entry's x (by key digest), the axis title and whether x is a count.

    Days since the first entry's day; when all share one day, the entries' positions 1, 2, ... in the
    order they were complete (their newest run, then a published table's row order), since a date axis
    would put every point on one vertical line.
    """
    ordered = sorted(entries, key=lambda e: e.order)
    days = {_day(e.created) for e in ordered}
    if len(days) == 1:
        (only,) = days
        return ({e.key_digest: float(i + 1) for i, e in enumerate(ordered)},
                f"entries in the order they were complete (all on {only.isoformat()})", True)
    start = min(days)
    return ({e.key_digest: float((_day(e.created) - start).days) for e in ordered},
            f"days since {start.isoformat()}", False)


def progression_plot(table: TrackTable, styles: dict[str, MethodStyle]) -> BoardPlot | None:
    """Every ranked entry's mean as a dot in its method's style; the record as a step line through the history."""
    if not table.history:
        return None
    ranked = [e for e in table.ranked if e.mean is not None]
    x_of, x_label, integer_x = timeline(ranked)
    step_x: list[float] = []
    step_y: list[float] = []
    for step in table.history:
        x = x_of[step.entry.key_digest]
        if step_y:
            step_x.append(x)
            step_y.append(step_y[-1])
        step_x.append(x)
        step_y.append(step.entry.mean)
    last = max(x_of.values())
    if last > step_x[-1]:
        step_x.append(last)
        step_y.append(step_y[-1])
    record = MethodStyle("the record (step line)", RECORD_COLOR, "o", line=True)
    series = [Series(tuple(step_x), tuple(step_y), line=True, points=len(step_x) == 1, color=RECORD_COLOR)]
    groups = _grouped([(e.method, x_of[e.key_digest], e.mean) for e in ranked], styles)
    for style, points in groups.items():
        series.append(Series(tuple(x for x, _ in points), tuple(y for _, y in points), line=False, points=True,
                             color=style.color, marker=style.marker))
    spec = PlotSpec(f"progression-{table.anchor}", "record progression: validation loss of each entry, in time",
                    x_label, "val loss (nats/token)", tuple(series), integer_x=integer_x)
    note = "Entries placed in the order they were complete: they all share one day." if integer_x else ""
    return BoardPlot(spec, _legend(styles, {e.method for e in ranked}, record), note)


# --- loss against epoch budget --------------------------------------------------------------------

def frontier_points(table: TrackTable) -> list[tuple[str, float, Entry]]:
    """(method, budget in epochs, best entry of that method at that budget), by method then budget."""
    best: dict[tuple[str, float], Entry] = {}
    for entry in table.ranked:
        key = (entry.method, entry.budget_epochs)
        if key not in best or entry.mean < best[key].mean:
            best[key] = entry
    return sorted(((e.method, e.budget_epochs, e) for e in best.values()), key=lambda p: (p[0], p[1], p[2].order))


def _bounds(entry: Entry) -> tuple[float, float]:
    interval = entry.interval
    if interval is None or interval.low is None:
        return math.nan, math.nan
    return interval.low, interval.high


def use_log2(budgets: list[float]) -> bool:
    """Budgets that span a factor of four or more are read on a doubling scale (2, 4, 8, ... epochs)."""
    return min(budgets) > 0 and max(budgets) / min(budgets) >= 4


def frontier_plot(table: TrackTable, styles: dict[str, MethodStyle]) -> BoardPlot | None:
    """Each method's best entry at each budget, joined by a line in its style, with its interval over seeds;
    the lumped other methods as grey dots (a line through different methods would mean nothing)."""
    points = [(method, budget, entry) for method, budget, entry in frontier_points(table) if budget > 0]
    if not points:
        return None
    series = []
    for style in dict.fromkeys(styles.values()):
        members = sorted(((b, e) for m, b, e in points if styles[m] == style), key=lambda p: (p[0], p[1].mean))
        if not members:
            continue
        lows, highs = zip(*(_bounds(e) for _, e in members))
        series.append(Series(tuple(b for b, _ in members), tuple(e.mean for _, e in members),
                             line=style.color != OTHER_COLOR, points=True, color=style.color, marker=style.marker,
                             low=tuple(lows), high=tuple(highs)))
    budgets = [b for _, b, _ in points]
    log2 = use_log2(budgets)
    spec = PlotSpec(f"frontier-{table.anchor}", "validation loss against epoch budget, best entry per method",
                    "epoch budget" + (" (doubling scale)" if log2 else ""), "val loss (nats/token)", tuple(series),
                    log2_x=log2)
    return BoardPlot(spec, _legend(styles, {m for m, _, _ in points}))


# --- loss against epochs, and the targets -----------------------------------------------------------

def epochs_plot(table: TrackTable, styles: dict[str, MethodStyle], epochs: EpochsTable | None) -> BoardPlot | None:
    """Each method's curve on the standard epoch grid (mean over seeds, interval bars), in its style, and each
    target as a dashed horizontal line; methods lumped as "other" are left out (their curves would be one grey
    tangle), as are targets past the second."""
    if epochs is None:
        return None
    shown = [c for c in epochs.curves if styles[c.method].color != OTHER_COLOR]
    if not shown:
        return None
    series = []
    for curve in sorted(shown, key=lambda c: list(styles).index(c.method)):
        style = styles[curve.method]
        series.append(Series(curve.epochs, curve.mean, line=True, points=len(curve.epochs) == 1, color=style.color,
                             marker=style.marker, low=curve.low, high=curve.high))
    first = min(c.epochs[0] for c in shown)
    last = max(c.epochs[-1] for c in shown)
    lines = []
    for target, color in zip(epochs.targets, TARGET_COLORS):
        series.append(Series((first, last), (target.loss, target.loss), line=True, color=color, dashed=True))
        lines.append(MethodStyle(f"target: {target.label} ({target.loss:.4f})", color, "o", line=True, dashed=True))
    spec = PlotSpec(f"epochs-{table.anchor}", "validation loss against epochs, each method's longest run",
                    "epochs" + (" (doubling scale)" if last / first >= 4 else ""), "val loss (nats/token)",
                    tuple(series), log2_x=last / first >= 4)
    return BoardPlot(spec, _legend(styles, {c.method for c in shown}, *lines))
