"""Entries, ranking and record history on fixture records, against scipy and hand-worked expectations."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import pytest

from harness.formats.records import record_to_json
from leaderboard.collect import LoadedRecord
from leaderboard.history import NOT_TESTED
from leaderboard.naming import page_names
from leaderboard.settings import BoardSettings
from leaderboard.tables import build_tables
from tests.leaderboard.factory import make_record, method_hash

scipy_stats = pytest.importorskip("scipy.stats", reason="scipy is the independent check (pip install -e .[dev])")

START = datetime(2026, 3, 1, tzinfo=timezone.utc)


def run(index: int, method: str, loss: float, day: int, seed: int = 0, **overrides) -> dict:
    created = (START + timedelta(days=day, minutes=seed)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return make_record(index, method__name=method, method__hash=method_hash(method), seed=seed,
                       result__val_loss=loss, created=created, **overrides)


def seeds(start_index: int, method: str, losses: list[float], day: int, **overrides) -> list[dict]:
    return [run(start_index + i, method, loss, day, seed=i, **overrides) for i, loss in enumerate(losses)]


def tables_of(records: list[dict], settings: BoardSettings = BoardSettings()):
    loaded = [LoadedRecord(f"synthetic/{r['run_id']}.json", r, record_to_json(r)) for r in records]
    return build_tables(loaded, page_names([item.relpath for item in loaded]), settings)


A = [3.101, 3.103, 3.102]
B = [3.090, 3.0905, 3.0895]
C = [3.05]
D = [3.2]
E = [3.04980, 3.04985, 3.04990]
F = [3.04930, 3.04932, 3.04934]  # below E by 0.00053: a tiny p, but under the 0.001 margin


def history_board() -> list[dict]:
    return (seeds(0, "A", A, day=1) + seeds(10, "D", D, day=2) + seeds(20, "B", B, day=3)
            + seeds(30, "C", C, day=5) + seeds(40, "E", E, day=6) + seeds(50, "F", F, day=7))


def test_runs_of_one_method_configuration_and_budget_form_one_entry():
    records = (seeds(0, "A", A, day=1)
               + seeds(10, "A", [3.3], day=1, hparams={"lr": 0.5})  # another configuration
               + seeds(20, "A", [3.4], day=1, budget_epochs=4.0)  # another budget
               + seeds(30, "A", [3.5], day=1, compute__class="limited"))  # another class: another table
    tables = tables_of(records)
    assert [(t.track, t.compute_class) for t in tables] == [("synthetic", "tiny"), ("synthetic", "limited")]
    tiny = tables[0]
    assert [e.n for e in tiny.ranked] == [3, 1, 1]
    entry = tiny.ranked[0]
    assert [r.seed for r in entry.runs] == [0, 1, 2]
    assert entry.mean == pytest.approx(math.fsum(A) / 3, abs=1e-15)
    low, high = scipy_stats.t.interval(0.95, 2, loc=sum(A) / 3, scale=scipy_stats.sem(A))
    assert entry.interval.low == pytest.approx(low, abs=1e-12) and entry.interval.high == pytest.approx(high, abs=1e-12)
    single = tiny.ranked[1]
    assert single.n == 1 and single.interval.low is None


def test_ranking_uses_the_mean_not_the_best_seed():
    records = seeds(0, "noisy", [3.00, 3.20], day=1) + seeds(10, "steady", [3.05, 3.06], day=1)
    ranked = tables_of(records)[0].ranked
    assert [(e.method, e.rank) for e in ranked] == [("steady", 1), ("noisy", 2)]


def test_an_unrankable_run_is_its_own_unranked_entry_with_its_reason():
    over = run(5, "A", 3.0, day=1, seed=9)
    over["unranked_reasons"] = ["trained 16.2 min, past the tiny class's 15 min cap"]
    table = tables_of(seeds(0, "A", A, day=1) + [over])[0]
    assert [e.n for e in table.ranked] == [3]
    assert [e.reasons for e in table.unranked] == [("trained 16.2 min, past the tiny class's 15 min cap",)]


def test_history_matches_the_expected_sequence_and_welch_p_values():
    table = tables_of(history_board())[0]
    steps = table.history
    assert [s.entry.method for s in steps] == ["A", "B", "C", "E", "F"]  # D (day 2) never beat A
    first, b, c, e, f = steps
    assert first.verdict == "first record" and first.p_value is None
    assert [s.entry.date for s in steps] == ["2026-03-02", "2026-03-04", "2026-03-06", "2026-03-07", "2026-03-08"]

    expected_b = scipy_stats.ttest_ind(B, A, equal_var=False, alternative="less").pvalue
    assert b.p_value == pytest.approx(expected_b, rel=1e-9)
    assert b.improvement == pytest.approx(sum(A) / 3 - sum(B) / 3, abs=1e-12)
    assert expected_b < 0.01 and b.verdict == "significant"

    assert c.p_value is None and c.verdict == NOT_TESTED  # C has one run
    assert e.p_value is None and e.verdict == NOT_TESTED  # E beats C, which has one run

    expected_f = scipy_stats.ttest_ind(F, E, equal_var=False, alternative="less").pvalue
    assert f.p_value == pytest.approx(expected_f, rel=1e-9)
    assert expected_f < 0.01 and f.improvement < 0.001 and f.verdict == "not significant"  # under the margin


def test_the_thresholds_are_the_boards_settings():
    lenient = BoardSettings(p_threshold=0.01, min_margin_nats=0.0001)
    assert tables_of(history_board(), lenient)[0].history[-1].verdict == "significant"
    strict = BoardSettings(p_threshold=1e-12, min_margin_nats=0.0)
    assert tables_of(history_board(), strict)[0].history[1].verdict == "not significant"
    with pytest.raises(Exception):
        BoardSettings().p_threshold = 0.5  # frozen: one set of rules per build
