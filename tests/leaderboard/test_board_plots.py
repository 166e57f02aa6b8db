"""Table plots that say something: an axis that fits the data, a colour per method shared by every plot of the
table, a legend, intervals over seeds, and a record history that says when budgets differ."""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone

import pytest

from harness.formats.records import record_to_json
from leaderboard.board_plots import (OTHER_COLOR, OTHER_METHODS, PALETTE, RECORD_COLOR, frontier_plot, method_styles,
                                     progression_plot)
from leaderboard.collect import LoadedRecord
from leaderboard.naming import page_names
from leaderboard.plots import PlotSpec, Series, render_svg
from leaderboard.site import build_site
from leaderboard.tables import build_tables
from tests.leaderboard.factory import make_record, method_hash, write_board

START = datetime(2026, 3, 1, 9, 0, tzinfo=timezone.utc)
T_975_DF1 = 12.706204736174698  # Student t quantile, 97.5 %, one degree of freedom (tables)


def run(index: int, method: str, loss: float, *, hours: float = 0.0, seed: int = 0, budget: float = 8.0) -> dict:
    created = (START + timedelta(hours=hours, minutes=seed)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return make_record(index, method__name=method, method__hash=method_hash(method), seed=seed,
                       result__val_loss=loss, created=created, budget_epochs=budget,
                       metered__epochs=budget, metered__train_tokens=int(budget * 100_000),
                       metered__per_stream={"main": int(budget * 100_000)})


def table_of(records: list[dict]):
    loaded = [LoadedRecord(f"synthetic/{r['run_id']}.json", r, record_to_json(r)) for r in records]
    (table,) = build_tables(loaded, page_names([item.relpath for item in loaded]))
    return table


def series_by_color(spec: PlotSpec) -> dict[str, Series]:
    return {s.color: s for s in spec.series}


# --- the progression's x axis -------------------------------------------------------------------------

def test_entries_of_one_day_are_placed_in_the_order_they_were_complete():
    # completion order C (09:00), A (11:00), B (13:00); file and name orders differ from it
    table = table_of([run(0, "B", 3.30, hours=4), run(1, "A", 3.20, hours=2), run(2, "C", 3.40, hours=0)])
    plot = progression_plot(table, method_styles(table))
    assert plot.spec.integer_x and "order they were complete (all on 2026-03-01)" in plot.spec.x_label
    assert plot.axis_note
    styles = method_styles(table)
    dots = series_by_color(plot.spec)
    assert (dots[styles["C"].color].x, dots[styles["C"].color].y) == ((1.0,), (3.40,))
    assert (dots[styles["A"].color].x, dots[styles["A"].color].y) == ((2.0,), (3.20,))
    assert (dots[styles["B"].color].x, dots[styles["B"].color].y) == ((3.0,), (3.30,))
    record = dots[RECORD_COLOR]  # C sets the record at 1, A lowers it at 2, and it holds to the last entry, 3
    assert record.x == (1.0, 2.0, 2.0, 3.0) and record.y == (3.40, 3.40, 3.20, 3.20)


def test_entries_on_several_days_are_placed_by_day():
    table = table_of([run(0, "A", 3.3, hours=0), run(1, "B", 3.2, hours=24 * 3), run(2, "C", 3.1, hours=24 * 3 + 5)])
    plot = progression_plot(table, method_styles(table))
    assert not plot.spec.integer_x and plot.spec.x_label == "days since 2026-03-01" and not plot.axis_note
    xs = sorted(x for s in plot.spec.series if s.color != RECORD_COLOR for x in s.x)
    assert xs == [0.0, 3.0, 3.0]


# --- one style per method, in every plot of the table -----------------------------------------------

def test_a_method_has_one_colour_across_the_tables_plots_and_methods_differ():
    records = [run(0, "q0", 3.10, budget=2.0), run(1, "q0", 3.05, budget=8.0, hours=1),
               run(2, "naive", 3.30, budget=2.0, hours=2), run(3, "naive", 3.20, budget=8.0, hours=3),
               run(4, "single", 3.40, budget=2.0, hours=4)]
    table = table_of(records)
    styles = method_styles(table)
    # ordered by best mean: q0 (3.05), naive (3.20), single (3.40)
    assert [styles[m].color for m in ("q0", "naive", "single")] == list(PALETTE[:3])
    progression, frontier = progression_plot(table, styles), frontier_plot(table, styles)
    for plot in (progression, frontier):
        by_color = series_by_color(plot.spec)
        assert sorted(by_color[styles["q0"].color].y) == [3.05, 3.10]  # q0's points, and only those
        assert sorted(by_color[styles["naive"].color].y) == [3.20, 3.30]
        assert [s.label for s in plot.legend][:3] == ["q0", "naive", "single"]
    assert [s.color for s in progression.legend][-1] == RECORD_COLOR


def test_methods_past_the_distinct_styles_are_one_grey_group():
    count = len(PALETTE) * 2 + 3  # 23 methods: 20 styles, then 3 lumped
    table = table_of([run(i, f"m{i:02d}", 3.0 + 0.01 * i, hours=i) for i in range(count)])
    styles = method_styles(table)
    assert len({(s.color, s.marker) for m, s in styles.items() if s.label != OTHER_METHODS}) == 20
    assert [m for m, s in styles.items() if s.label == OTHER_METHODS] == ["m20", "m21", "m22"]
    plot = progression_plot(table, styles)
    grey = series_by_color(plot.spec)[OTHER_COLOR]
    assert grey.y == pytest.approx((3.20, 3.21, 3.22)) and not grey.line
    assert [s.label for s in plot.legend].count(OTHER_METHODS) == 1


# --- loss against budget: intervals and a doubling scale ------------------------------------------------

def test_frontier_bars_are_the_entries_intervals_over_seeds():
    records = [run(0, "A", 3.0, budget=2.0, seed=0), run(1, "A", 3.2, budget=2.0, seed=1),
               run(2, "A", 2.9, budget=8.0, hours=1)]
    table = table_of(records)
    plot = frontier_plot(table, method_styles(table))
    (series,) = plot.spec.series
    assert series.x == (2.0, 8.0) and series.y == pytest.approx((3.1, 2.9)) and series.line
    # hand-worked: s = sqrt(((3.0-3.1)^2 + (3.2-3.1)^2) / 1) = 0.141421; half = t * s / sqrt(2) = t * 0.1
    assert series.low[0] == pytest.approx(3.1 - T_975_DF1 * 0.1, abs=1e-9)
    assert series.high[0] == pytest.approx(3.1 + T_975_DF1 * 0.1, abs=1e-9)
    assert math.isnan(series.low[1]) and math.isnan(series.high[1])  # one run: no interval
    assert plot.spec.log2_x and "doubling" in plot.spec.x_label  # 2 to 8 epochs: a factor of four


def test_a_log2_axis_puts_power_of_two_ticks_where_the_data_are():
    spec = PlotSpec("frontier-x", "t", "epochs", "loss", (Series((2.0, 4.0, 32.0), (3.3, 3.2, 3.1)),), log2_x=True)
    svg = render_svg(spec)
    found = re.findall(r'<text x="([-\d.]+)" y="[-\d.]+" text-anchor="middle">(\d+)</text>', svg)
    texts = [t for _, t in found]
    assert texts == ["2", "4", "8", "16", "32"]
    # independent mapping: log2 x from 1 to 5, padded 5 % each side, inside the axes (0.14 .. 0.96 of 360 pt)
    low, high = 1 - 0.2, 5 + 0.2
    for x, text in found:
        expected = (0.14 + 0.82 * (math.log2(int(text)) - low) / (high - low)) * 360.0
        assert float(x) == pytest.approx(expected, abs=0.01)


def test_colours_and_bars_reach_the_svg_and_method_names_do_not():
    records = [run(0, "<b>A</b>", 3.0, budget=2.0, seed=0), run(1, "<b>A</b>", 3.2, budget=2.0, seed=1),
               run(2, "B", 3.3, budget=8.0, hours=1)]
    table = table_of(records)
    styles = method_styles(table)
    svg = render_svg(frontier_plot(table, styles).spec)
    for method in ("<b>A</b>", "B"):
        assert f"stroke: {styles[method].color}" in svg
    assert "<b>" not in svg and "&lt;b&gt;" not in svg  # the legend is HTML beside the figure


def test_the_same_plot_gives_the_same_bytes_after_a_plot_of_many_series():
    small = PlotSpec("frontier-y", "t", "x", "y", (Series((1.0, 2.0), (3.0, 2.0), color="#d62728"),))
    first = render_svg(small)
    many = tuple(Series((1.0, 2.0), (3.0 + i, 2.0 + i), color=PALETTE[i % 10], marker="os"[i // 10 % 2],
                        low=(2.5 + i, math.nan), high=(3.5 + i, math.nan)) for i in range(24))
    render_svg(PlotSpec("frontier-y", "t", "x", "y", many))
    assert render_svg(small) == first


# --- the record history across budgets ------------------------------------------------------------------

def test_the_history_says_where_a_step_beat_a_record_of_another_budget(tmp_path):
    records = [run(0, "A", 3.30, budget=2.0, hours=0), run(1, "B", 3.25, budget=2.0, hours=1),
               run(2, "A", 3.10, budget=8.0, hours=2)]
    table = table_of(records)
    assert [(s.entry.method, s.budget_changed) for s in table.history] == [("A", False), ("B", False), ("A", True)]

    write_board(tmp_path / "records", records)
    build_site(tmp_path / "records", tmp_path / "site", workers=1)
    page = next((tmp_path / "site" / "t").glob("*.html")).read_text(encoding="utf-8")
    assert "1 of these 3 steps beat a record set at another epoch budget" in page
    assert page.count("⚑ 2 →") == 1
    assert 'class="legend"' in page and 'style="color: #1f77b4"' in page
