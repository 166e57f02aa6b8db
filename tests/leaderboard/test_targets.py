"""Epochs to a target against hand-worked examples: the grid, the interpolation, the bounds and the intervals.

The curves here are straight lines in log2(epochs), so every expected number has a closed form worked
out in the test (with the Student t quantile from tables), independently of the code's grid walk.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import pytest

from harness.formats.records import record_to_json
from leaderboard.collect import LoadedRecord
from leaderboard.naming import page_names
from leaderboard.published import DEFAULT_PUBLISHED, published_records
from leaderboard.site import build_site
from leaderboard.tables import build_tables
from leaderboard.targets import Crossing, Target, crossing, epoch_grid, epochs_table, read_target, run_curve, value_at
from tests.leaderboard.factory import make_record, method_hash, write_board

T_975_DF1 = 12.706204736174698  # Student t, 97.5 % quantile, one degree of freedom (tables)
START = datetime(2026, 3, 1, tzinfo=timezone.utc)


def run(index: int, method: str, curve: list[tuple[float, float]], *, seed: int = 0, budget: float | None = None,
        **overrides) -> dict:
    budget = budget if budget is not None else max(e for e, _ in curve)
    created = (START + timedelta(hours=index)).strftime("%Y-%m-%dT%H:%M:%SZ")
    tokens = int(budget * 100_000)
    return make_record(index, method__name=method, method__hash=method_hash(method), seed=seed, created=created,
                       budget_epochs=budget, metered__epochs=budget, metered__train_tokens=tokens,
                       metered__per_stream={"main": tokens}, result__val_loss=curve[-1][1],
                       curve=[{"epochs": e, "val_loss": v} for e, v in curve], **overrides)


def epochs_of(records: list[dict], extra: list[LoadedRecord] = ()):
    loaded = [LoadedRecord(f"{r['track']['name']}/{r['run_id']}.json", r, record_to_json(r)) for r in records]
    everything = loaded + list(extra)
    tables = build_tables(everything, page_names([item.relpath for item in everything]))
    curves = {item.relpath: run_curve(item.record["curve"]) for item in loaded}
    measured = next(t for t in tables if not t.reported)
    return epochs_table(measured, curves, 0.95, tables)


# --- the grid and one curve -------------------------------------------------------------------------------

def test_the_grid_is_four_points_per_doubling_inside_the_curve_plus_its_end():
    grid = epoch_grid(2.0, 31.93)
    assert len(grid) == 17  # 2^(4/4) .. 2^(19/4) = 26.91, then the last stamp
    assert grid[:5] == pytest.approx((2.0, 2.0 ** 1.25, 2.0 ** 1.5, 2.0 ** 1.75, 4.0))
    assert grid[-2:] == pytest.approx((2.0 ** 4.75, 31.93))
    assert epoch_grid(1.9958, 8.0) == pytest.approx(tuple(2.0 ** (k / 4) for k in range(4, 13)))  # 8 is on it


def test_a_curve_is_read_linearly_in_log2_epochs_and_never_beyond_its_stamps():
    points = [(2.0, 5.0), (8.0, 4.0)]
    assert value_at(points, 4.0) == pytest.approx(4.5)  # log2 4 = 2, halfway from 1 to 3
    assert value_at(points, 2.0 ** 1.5) == pytest.approx(4.75)  # a quarter of the way
    assert value_at(points, 2.0) == 5.0 and value_at(points, 8.0) == 4.0
    assert value_at(points, 1.9) is None and value_at(points, 8.1) is None


def test_a_record_curve_keeps_finite_points_in_epoch_order():
    record_curve = [{"epochs": 4.0, "val_loss": 4.5}, {"epochs": 2.0, "val_loss": 5.0},
                    {"epochs": 3.0, "val_loss": None}, {"epochs": 0.0, "val_loss": 6.0}]
    assert run_curve(record_curve) == [(2.0, 5.0), (4.0, 4.5)]


def test_crossings_and_their_bounds():
    epochs, values = (2.0, 4.0, 8.0), (5.0, 4.5, 4.0)
    assert crossing(epochs, values, 4.75) == Crossing(2.0 ** 1.5)  # halfway between 2 and 4 in log2
    assert crossing(epochs, values, 5.5) == Crossing(2.0, "≤")  # already there at the first epoch
    assert crossing(epochs, values, 3.9) == Crossing(8.0, ">")  # never down to it
    assert crossing(epochs, values, 4.0) == Crossing(8.0)  # reached exactly at the last point
    assert crossing(epochs, (5.0, math.nan, 4.0), 4.5) is None  # no interval curve: no reading
    assert Crossing(8.0, ">").text == "> 8.0" and Crossing(4.32, "=").text == "4.3"


# --- two seeds, hand-worked ----------------------------------------------------------------------------

def test_mean_and_interval_crossings_of_two_seeds():
    """Seeds A: 5.0 at 2 epochs to 4.0 at 8; B: 5.2 to 4.4. With u = log2(epochs) - 1 in [0, 2]:
    A = 5.0 - 0.5u, B = 5.2 - 0.4u, mean 5.1 - 0.45u, |A - B| = 0.2 + 0.1u, and for two values the
    interval's half-width is t * s / sqrt(2) with s = |A - B| / sqrt(2), so t * |A - B| / 2.
    Everything is linear in u, so reading between grid points is exact."""
    records = [run(0, "m", [(2.0, 5.0), (8.0, 4.0)], seed=0), run(1, "m", [(2.0, 5.2), (8.0, 4.4)], seed=1)]
    table = epochs_of(records)
    (curve,) = table.curves
    assert curve.n == 2 and curve.epochs == pytest.approx(tuple(2.0 ** (k / 4) for k in range(4, 13)))
    at_4 = curve.epochs.index(pytest.approx(4.0))
    half = T_975_DF1 * (0.2 + 0.1 * 1.0) / 2  # u = 1 at 4 epochs
    assert curve.mean[at_4] == pytest.approx(4.65)
    assert (curve.low[at_4], curve.high[at_4]) == pytest.approx((4.65 - half, 4.65 + half))

    reading = read_target(curve, Target("t", 4.6, "hand-worked"))
    # mean: 5.1 - 0.45u = 4.6 at u = 0.5 / 0.45
    assert reading.central.exact and reading.central.epochs == pytest.approx(2.0 ** (1 + 0.5 / 0.45))
    # lower curve: (5.1 - 0.1t) - (0.45 + 0.05t)u starts at 3.83, below 4.6 already
    assert reading.earliest == Crossing(2.0, "≤")
    # upper curve: (5.1 + 0.1t) - (0.45 - 0.05t)u rises (0.45 < 0.05t): never down to 4.6 by 8 epochs
    assert reading.latest == Crossing(8.0, ">")
    assert reading.interval_text == "≤ 2.0 to > 8.0"
    # a target above where all three curves start (the upper one at 5.1 + 0.1t = 6.37): "≤ 2.0" throughout
    above = read_target(curve, Target("t", 6.5, "hand-worked"))
    assert (above.central, above.earliest, above.latest) == (Crossing(2.0, "≤"),) * 3


def test_interval_crossings_where_the_seeds_agree_more_late():
    """Seeds A: 5.0 to 4.0 and B: 5.4 to 4.0 over 2..8 epochs: |A - B| = 0.4 - 0.2u, mean 5.2 - 0.6u.
    Upper curve (5.2 + 0.2t) - (0.6 + 0.1t)u meets 4.2 at u = (1.0 + 0.2t) / (0.6 + 0.1t);
    lower curve (5.2 - 0.2t) - (0.6 - 0.1t)u is 2.66 at u = 0, below 4.2 from the start."""
    records = [run(0, "m", [(2.0, 5.0), (8.0, 4.0)], seed=0), run(1, "m", [(2.0, 5.4), (8.0, 4.0)], seed=1)]
    (curve,) = epochs_of(records).curves
    reading = read_target(curve, Target("t", 4.2, "hand-worked"))
    assert reading.central.epochs == pytest.approx(2.0 ** (1 + 1.0 / 0.6))
    u = (1.0 + 0.2 * T_975_DF1) / (0.6 + 0.1 * T_975_DF1)
    assert reading.latest.exact and reading.latest.epochs == pytest.approx(2.0 ** (1 + u), rel=1e-9)
    assert reading.earliest == Crossing(2.0, "≤")


def test_one_seed_has_no_interval():
    table = epochs_of([run(0, "m", [(2.0, 5.0), (8.0, 4.0)])])
    (curve,) = table.curves
    assert all(math.isnan(v) for v in curve.low + curve.high)


# --- which runs, which targets -----------------------------------------------------------------------

def test_the_naive_ensemble_sets_a_target_and_others_are_compared_with_it():
    records = [run(0, "naive_ensemble", [(2.0, 5.0), (16.0, 4.0)]),  # best along its curve: 4.0 at 16 epochs
               run(1, "q0", [(2.0, 5.0), (8.0, 4.0), (16.0, 3.8)]),  # down to 4.0 at 8 epochs
               run(2, "slow", [(2.0, 5.0), (16.0, 4.5)])]  # never down to 4.0
    table = epochs_of(records)
    (target,) = table.targets
    assert target.label == "naive_ensemble's best" and target.loss == pytest.approx(4.0) and target.method
    assert table.reading("naive_ensemble", target).central.epochs == pytest.approx(16.0)
    assert table.reading("q0", target).central.epochs == pytest.approx(8.0)
    assert table.fewer("q0", target) == pytest.approx(2.0)  # 16 / 8
    assert table.reading("slow", target).central == Crossing(16.0, ">")
    assert table.fewer("slow", target) is None  # a bound is not a ratio


def test_a_method_is_read_from_its_longest_run_and_needs_every_seed_curve():
    records = [run(0, "m", [(2.0, 9.0), (4.0, 8.0)], budget=4.0),  # a shorter budget: another schedule
               run(1, "m", [(2.0, 5.0), (8.0, 4.0)], budget=8.0),
               run(2, "gap", [(2.0, 5.0), (8.0, 4.0)], seed=0), run(3, "gap", [(2.0, 5.0), (8.0, 4.0)], seed=1)]
    records[-1]["curve"] = []  # one seed without a curve: a mean over the other seed alone would mislead
    table = epochs_of(records)
    assert [(c.method, c.entry.budget_epochs) for c in table.curves] == [("m", 8.0)]
    assert table.curves[0].mean[0] == pytest.approx(5.0)


def test_the_published_baseline_of_the_same_track_and_class_is_a_target():
    published = published_records(DEFAULT_PUBLISHED)
    record = run(0, "m", [(1.0, 3.5), (8.0, 3.3)], track__name="fineweb", compute__class="limited")
    table = epochs_of([record], published)
    assert [(t.label, t.loss) for t in table.targets] == [("the published baseline", 3.402)]  # limited row #1
    # 3.5 - 0.2 * log2(e) / 3 = 3.402 at log2(e) = 1.47
    assert table.reading("m", table.targets[0]).central.epochs == pytest.approx(2.0 ** (0.098 * 3 / 0.2))


def test_the_table_page_shows_the_epochs_to_each_target(tmp_path):
    records = [run(0, "naive_ensemble", [(2.0, 5.0), (16.0, 4.0)]), run(1, "q0", [(2.0, 5.0), (8.0, 4.0)])]
    write_board(tmp_path / "records", records)
    build_site(tmp_path / "records", tmp_path / "site", workers=1)
    page = next((tmp_path / "site" / "t").glob("*.html")).read_text(encoding="utf-8")
    assert "Epochs to naive_ensemble&#39;s best" in page
    assert ">8.0 <span class=\"note\">· 2.0× fewer</span>" in page and ">16.0</td>" in page
    assert 'figure class="epochs"' in page
