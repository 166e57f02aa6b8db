"""Inline SVG plots for record pages, drawn with matplotlib and byte-for-byte reproducible.

Speed: a matplotlib axis with automatic ticks costs ~40 ms to save as SVG, mostly laying out tick
labels, which is too slow for a board of a thousand records with two plots each. So each process keeps
one figure and only moves its artists (data lines, frame, grid lines at ticks chosen by matplotlib's
MaxNLocator), and writes the axis titles and tick labels as plain SVG text at the positions the axes'
own transform gives: about 4 ms of CPU per plot. On top, plots are rendered once per distinct content
(a digest of the data and of the renderer), optionally kept in a cache folder across builds, and large
batches are shared with worker processes.

Reproducibility: every render starts from matplotlib's default style plus fixed settings (so a user's
matplotlibrc changes nothing), SVG ids are salted and prefixed per plot kind (the two plots of one
page never share an id), and the date metadata is left out. Plot text is only fixed axis titles and
formatted numbers: no string from a record is drawn.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import cached_property, lru_cache
from html import escape
from pathlib import Path
from typing import Iterable

from harness.common.atomic import write_text_atomic

RENDERER_VERSION = "2"
PARALLEL_MIN_PLOTS = 200  # below this, starting workers (importing matplotlib) costs more than it saves
_FIGSIZE = (5.0, 3.0)
_AXES_RECT = (0.14, 0.17, 0.82, 0.78)
_MAX_TICKS = 8
_FONT_FAMILY = "'DejaVu Sans', 'Bitstream Vera Sans', Verdana, Arial, sans-serif"
_X_LABEL_DROP = 10.0  # points from the axes' bottom edge to an x tick label's baseline
_Y_LABEL_GAP = 4.0  # points between the axes' left edge and a y tick label's end
_Y_LABEL_CENTER = 2.9  # baseline below the tick so that digits 8px high sit centred on it
_MAX_SERIES = 24  # artists made once per process, so a plot's SVG never depends on what was drawn before
_SMALL_SERIES = 3  # a run's plots: a canvas of this many lines and no bars draws them a fifth faster
_COLORS = ("#1f6fb4", "#e8710a", "#2a9d3a")  # a series without a colour of its own takes these, by position
_MARKERS = {"o", "s", "^", "D", "None"}
_STYLE = {
    "svg.fonttype": "none",  # any text stays <text>, never glyph outlines
    "font.size": 8.0,
    "lines.linewidth": 1.4,
    "lines.markersize": 4.0,
    "path.simplify": False,
}


@dataclass(frozen=True)
class Series:
    """Points of one kind: a line, dots, or both; optionally a colour and marker of its own and, per point,
    an interval (low, high) drawn as a vertical bar (NaN bounds: no bar at that point)."""

    x: tuple[float, ...]
    y: tuple[float, ...]
    line: bool = True
    points: bool = False
    color: str | None = None  # "#rrggbb"; None: the default colour of its position
    marker: str = "o"  # one of _MARKERS, used where `points`
    low: tuple[float, ...] | None = None
    high: tuple[float, ...] | None = None
    dashed: bool = False


@dataclass(frozen=True)
class PlotSpec:
    kind: str  # also the SVG id salt, so it must differ between plots sharing a page
    title: str  # accessible label of the image
    x_label: str
    y_label: str
    series: tuple[Series, ...]
    integer_x: bool = False
    log2_x: bool = False  # x on a base-2 log scale (epochs double from budget to budget), ticks at powers of 2

    def __post_init__(self):
        if len(self.series) > _MAX_SERIES:
            raise ValueError(f"a plot takes at most {_MAX_SERIES} series, got {len(self.series)}")
        for series in self.series:
            if series.marker not in _MARKERS:
                raise ValueError(f"unknown marker {series.marker!r}")
            if self.log2_x and any(x <= 0 for x in series.x):
                raise ValueError("a log2 x axis needs x > 0")

    @cached_property
    def key(self) -> str:
        """Digest of everything that decides the output bytes: the data and the renderer's version."""
        payload = json.dumps([RENDERER_VERSION, _matplotlib_version(), self.kind, self.title, self.x_label,
                              self.y_label, self.integer_x, self.log2_x, [_series_fields(s) for s in self.series]])
        return hashlib.sha256(payload.encode()).hexdigest()


def _series_fields(series: Series) -> list:
    """A series' fields in order, for the plot key (dataclasses.asdict deep-copies: ten times slower)."""
    return [series.x, series.y, series.line, series.points, series.color, series.marker, series.low, series.high,
            series.dashed]


@lru_cache(maxsize=None)
def _matplotlib_version() -> str:
    import matplotlib

    return matplotlib.__version__


def _finite_points(pairs: Iterable[tuple[object, object]]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    kept = sorted((float(x), float(y)) for x, y in pairs
                  if isinstance(x, (int, float)) and isinstance(y, (int, float))
                  and math.isfinite(x) and math.isfinite(y))
    return tuple(p[0] for p in kept), tuple(p[1] for p in kept)


def loss_plot_spec(record: dict) -> PlotSpec | None:
    """Validation loss against metered epochs: the run's curve as a line, single snapshots as dots."""
    curve = _finite_points((p["epochs"], p["val_loss"]) for p in record["curve"])
    snaps = _finite_points((s["epochs"], s["val_loss"]) for s in record["snapshots"])
    series = []
    if curve[0]:
        series.append(Series(*curve, line=True, points=len(curve[0]) == 1))  # a lone point needs a marker
    if snaps[0]:
        series.append(Series(*snaps, line=False, points=True))
    if not series:
        return None
    return PlotSpec("loss-epochs", "validation loss against epochs", "metered epochs",
                    "val loss (nats/token)", tuple(series))


def k_sweep_plot_spec(record: dict) -> PlotSpec | None:
    """Validation loss of the best ensemble of K members, against K."""
    x, y = _finite_points((p["k"], p["val_loss"]) for p in record["k_sweep"])
    if not x:
        return None
    return PlotSpec("k-sweep", "validation loss against ensemble size K", "ensemble size K",
                    "val loss (nats/token)", (Series(x, y, line=True, points=True),), integer_x=True)


# --- drawing --------------------------------------------------------------------------------------

def _padded_range(values: tuple[float, ...], integer: bool) -> tuple[float, float]:
    low, high = min(values), max(values)
    if high == low:
        half = 0.5 if integer else max(abs(low) * 0.01, 1e-3)
        return low - half, high + half
    pad = (high - low) * 0.05
    return low - pad, high + pad


@lru_cache(maxsize=2)
def _locator(integer: bool):
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10], integer=integer, min_n_ticks=2)


def _ticks(low: float, high: float, integer: bool) -> list[float]:
    """Round-number ticks inside the range, chosen the way matplotlib's own axes would."""
    ticks = [float(v) for v in _locator(integer).tick_values(low, high) if low <= v <= high]
    return ticks[:_MAX_TICKS]


def _tick_texts(ticks: list[float]) -> list[str]:
    """Tick labels with one number of decimals for the whole axis: the fewest that show every tick exactly."""
    step = min((b - a for a, b in zip(ticks, ticks[1:])), default=1.0) or 1.0
    decimals = next((d for d in range(7) if all(abs(round(v, d) - v) < step * 1e-6 for v in ticks)), 6)
    texts = [f"{v:.{decimals}f}" for v in ticks]
    return [t[1:] if t.startswith("-") and float(t) == 0 else t for t in texts]


def _log2_tick_texts(ticks: list[float]) -> list[str]:
    """Labels of a log2 axis: the epochs themselves, 0.5, 1, 2, 4, ... (ticks are whole exponents)."""
    return [f"{2.0 ** t:g}" for t in ticks]


def _bar_segments(series: Series, to_x) -> tuple[list[float], list[float]]:
    """A series' intervals as one path of vertical bars, NaN between bars; points without bounds have none."""
    xs: list[float] = []
    ys: list[float] = []
    if series.low is None or series.high is None:
        return xs, ys
    for x, low, high in zip(series.x, series.low, series.high):
        if math.isfinite(low) and math.isfinite(high):
            xs += [to_x(x), to_x(x), math.nan]
            ys += [low, high, math.nan]
    return xs, ys


def _extent(spec: PlotSpec) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Every x and y the plot must show: the points and the ends of their bars."""
    xs = tuple(v for s in spec.series for v in s.x)
    ys = [v for s in spec.series for v in s.y]
    for series in spec.series:
        for bound in (series.low, series.high):
            ys += [v for v in (bound or ()) if math.isfinite(v)]
    return xs, tuple(ys)


class _Canvas:
    """One reusable figure: creating axes and tick machinery per plot is what makes matplotlib slow.

    Every artist is made here, once, in a fixed order (grid, frame, then each series' bars and line), so a
    plot's SVG does not depend on which plots the process drew before. A process keeps two: a small one
    for plots of a few series without intervals (every run's plots), and one of _MAX_SERIES series with
    bars for the table plots; which one draws a spec depends on the spec alone.
    """

    def __init__(self, capacity: int, bars: bool):
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=_FIGSIZE)
        axes = self.figure.add_axes(_AXES_RECT)
        axes.set_axis_off()
        self.axes = axes
        self.x_grid = axes.plot([], [], color="#e3e3e3", linewidth=0.6, transform=axes.get_xaxis_transform())[0]
        self.y_grid = axes.plot([], [], color="#e3e3e3", linewidth=0.6, transform=axes.get_yaxis_transform())[0]
        axes.plot([0, 1, 1, 0, 0], [0, 0, 1, 1, 0], color="#555555", linewidth=0.8,
                  transform=axes.transAxes, clip_on=False)
        self.bars = []
        self.series = []
        for _ in range(capacity):
            self.bars.append(axes.plot([], [], linewidth=0.9, marker="None")[0] if bars else None)
            self.series.append(axes.plot([], [])[0])
        self.figure.patch.set_visible(False)  # the page is the background

    def draw(self, spec: PlotSpec) -> str:
        import matplotlib

        to_x = math.log2 if spec.log2_x else float
        xs, ys = _extent(spec)
        xs = tuple(to_x(v) for v in xs)
        integer_x = spec.integer_x or spec.log2_x
        x_low, x_high = _padded_range(xs, integer_x)
        y_low, y_high = _padded_range(ys, False)
        self.axes.set_xlim(x_low, x_high)
        self.axes.set_ylim(y_low, y_high)
        x_ticks, y_ticks = _ticks(x_low, x_high, integer_x), _ticks(y_low, y_high, False)
        self.x_grid.set_data(*_grid_segments(x_ticks))
        self.y_grid.set_data(*reversed(_grid_segments(y_ticks)))
        for index, (bars, line) in enumerate(zip(self.bars, self.series)):
            series = spec.series[index] if index < len(spec.series) else None
            if bars is not None:
                bars.set_visible(series is not None and series.low is not None)
            line.set_visible(series is not None)
            if series is None:
                continue
            color = series.color or _COLORS[index % len(_COLORS)]
            line.set_data([to_x(v) for v in series.x], series.y)
            line.set_color(color)
            line.set_linestyle(("--" if series.dashed else "-") if series.line else "none")
            line.set_marker(series.marker if series.points else "None")
            if series.low is not None:
                bars.set_data(*_bar_segments(series, to_x))
                bars.set_color(color)
        # Ids unique per plot kind: two plots inline on one page are one HTML document.
        matplotlib.rcParams["svg.hashsalt"] = f"slowrun-{spec.kind}"
        self.figure.set_gid(f"{spec.kind}-figure")
        self.axes.set_gid(f"{spec.kind}-axes")
        for index, line in enumerate(self.axes.lines):
            line.set_gid(f"{spec.kind}-line{index}")
        buffer = io.StringIO()
        self.figure.savefig(buffer, format="svg", metadata={"Date": None})
        x_texts = _log2_tick_texts(x_ticks) if spec.log2_x else _tick_texts(x_ticks)
        return _inline(buffer.getvalue(), spec.title, self.labels(spec, x_ticks, y_ticks, x_texts))

    def labels(self, spec: PlotSpec, x_ticks: list[float], y_ticks: list[float], x_texts: list[str]) -> str:
        """Axis titles and tick labels as SVG text, at the positions matplotlib's transforms give.

        Written directly rather than as matplotlib Text artists: their layout was two thirds of the time
        of a plot, and these labels need no layout beyond an anchor. The strings are fixed titles and
        formatted numbers, never record data.
        """
        to_points = 72.0 / self.figure.dpi
        height = self.figure.get_figheight() * 72.0
        (x_left, y_bottom), (x_right, y_top) = self.axes.transAxes.transform([(0.0, 0.0), (1.0, 1.0)])
        x_mid = (x_left + x_right) / 2 * to_points
        y_mid = height - (y_bottom + y_top) / 2 * to_points
        lines = [f'<g class="labels" style="font-size: 8px; font-family: {_FONT_FAMILY}" fill="#000000">',
                 f'  <text x="{x_mid:.2f}" y="{height - 6:.2f}" text-anchor="middle">{escape(spec.x_label)}</text>',
                 f'  <text x="10" y="{y_mid:.2f}" text-anchor="middle" transform="rotate(-90 10 {y_mid:.2f})">'
                 f'{escape(spec.y_label)}</text>']
        # one transform call for all ticks: x ticks paired with y=0, y ticks with x=0
        pairs = [(v, 0.0) for v in x_ticks] + [(0.0, v) for v in y_ticks]
        display = self.axes.transData.transform(pairs) * to_points if pairs else []
        for (x, _), text in zip(display[:len(x_ticks)], x_texts):
            y = height - y_bottom * to_points + _X_LABEL_DROP
            lines.append(f'  <text x="{x:.2f}" y="{y:.2f}" text-anchor="middle">{text}</text>')
        for (_, y), text in zip(display[len(x_ticks):], _tick_texts(y_ticks)):
            x = x_left * to_points - _Y_LABEL_GAP
            lines.append(f'  <text x="{x:.2f}" y="{height - y + _Y_LABEL_CENTER:.2f}" text-anchor="end">{text}</text>')
        lines.append("</g>")
        return "\n".join(lines)


def _grid_segments(ticks: list[float]) -> tuple[list[float], list[float]]:
    """Grid lines at the ticks as one path: (data coordinate, 0..1 across the axes), NaN between lines."""
    along, across = [], []
    for value in ticks:
        along += [value, value, math.nan]
        across += [0.0, 1.0, math.nan]
    return along, across


def _inline(svg: str, title: str, extra: str) -> str:
    """The document's <svg> element alone (no XML prolog), labelled for screen readers, `extra` appended."""
    body = svg[svg.index("<svg"):].rstrip()
    body = body.replace("<svg ", f'<svg class="plot" role="img" aria-label="{escape(title)}" ', 1)
    if not body.endswith("</svg>"):
        raise RuntimeError("matplotlib's SVG output did not end with </svg>")
    return f"{body[:-len('</svg>')]}{extra}\n</svg>\n"


_canvases: dict[bool, _Canvas] = {}


def _needs_large(spec: PlotSpec) -> bool:
    return len(spec.series) > _SMALL_SERIES or any(s.low is not None for s in spec.series)


def _canvas_for(spec: PlotSpec) -> _Canvas:
    large = _needs_large(spec)
    if large not in _canvases:
        _canvases[large] = _Canvas(_MAX_SERIES, bars=True) if large else _Canvas(_SMALL_SERIES, bars=False)
    return _canvases[large]


def _render_batch(specs: list[PlotSpec]) -> list[str]:
    """Render in this process under a fixed style, whatever the user's matplotlibrc says."""
    import matplotlib

    with matplotlib.rc_context():
        matplotlib.rcdefaults()
        matplotlib.rcParams.update(_STYLE)
        return [_canvas_for(spec).draw(spec) for spec in specs]


def render_svg(spec: PlotSpec) -> str:
    return _render_batch([spec])[0]


# --- many plots: dedupe, cache, worker processes --------------------------------------------------

class PlotCache:
    """SVG text by plot key in a folder; safe to share between builds because keys cover the renderer."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def get(self, key: str) -> str | None:
        try:
            text = (self.folder / f"{key}.svg").read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None
        return text if text.startswith("<svg") and text.rstrip().endswith("</svg>") else None

    def put(self, key: str, svg: str) -> None:
        try:
            write_text_atomic(self.folder / f"{key}.svg", svg)
        except OSError:
            pass  # a cache that cannot be written only costs time


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 4))


def _spec_from_dict(data: dict) -> PlotSpec:
    series = tuple(Series(**{**s, "x": tuple(s["x"]), "y": tuple(s["y"]),
                             "low": None if s["low"] is None else tuple(s["low"]),
                             "high": None if s["high"] is None else tuple(s["high"])}) for s in data["series"])
    return PlotSpec(data["kind"], data["title"], data["x_label"], data["y_label"], series, data["integer_x"],
                    data["log2_x"])


def _render_in_workers(specs: list[PlotSpec], workers: int) -> list[str]:
    """Split the batch between this process and `python -m leaderboard.plots` processes (JSON on pipes).

    Separate interpreters rather than multiprocessing: nothing of the caller's main module is
    re-imported, so a build started from any script or notebook behaves the same.
    """
    chunks = [specs[i::workers] for i in range(workers)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[1]),
                                                    env.get("PYTHONPATH")) if p)
    processes = [subprocess.Popen([sys.executable, "-m", "leaderboard.plots"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
                 for _ in chunks[1:]]
    try:
        with ThreadPoolExecutor(max_workers=len(processes)) as pipes:
            exchanges = [pipes.submit(process.communicate, json.dumps([asdict(s) for s in chunk]).encode())
                         for process, chunk in zip(processes, chunks[1:])]
            outputs = [_render_batch(chunks[0])]
            for process, exchange in zip(processes, exchanges):
                stdout, stderr = exchange.result()
                if process.returncode != 0:
                    raise RuntimeError(f"a plot worker failed:\n{stderr.decode(errors='replace')}")
                outputs.append(json.loads(stdout))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    rendered: list[str] = [""] * len(specs)
    for index, output in enumerate(outputs):
        rendered[index::workers] = output
    return rendered


def render_all(specs: Iterable[PlotSpec], *, cache: PlotCache | None = None,
               workers: int | None = None) -> dict[str, str]:
    """SVG for every distinct spec, by key; output does not depend on the cache or the worker count."""
    unique = {spec.key: spec for spec in specs}
    svgs: dict[str, str] = {}
    missing = []
    for key, spec in sorted(unique.items()):
        cached = cache.get(key) if cache else None
        if cached is None:
            missing.append(spec)
        else:
            svgs[key] = cached
    workers = default_workers() if workers is None else max(1, workers)
    if workers > 1 and len(missing) >= PARALLEL_MIN_PLOTS:
        rendered = _render_in_workers(missing, workers)
    else:
        rendered = _render_batch(missing) if missing else []
    for spec, svg in zip(missing, rendered):
        svgs[spec.key] = svg
        if cache:
            cache.put(spec.key, svg)
    return svgs


def _worker_main() -> None:
    specs = [_spec_from_dict(item) for item in json.load(sys.stdin)]
    json.dump(_render_batch(specs), sys.stdout)


if __name__ == "__main__":
    _worker_main()
