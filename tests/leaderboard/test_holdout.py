"""Test loss on the board: the record's `test` section, the gap rule, the column, the pages, and `add`.

The gap rule (leaderboard/holdout.py): flag when test − val > max(3 · sqrt(se_val² + se_test²), 0.001).
The numbers below are worked by hand: standard errors 0.003 and 0.004 give a gap standard error of 0.005
(a 3-4-5 triangle) and a threshold of 0.015 nats.
"""

from __future__ import annotations

import re

import pytest

from harness.errors import LeaderboardError
from harness.formats.records import SCHEMA_VERSION, load_record, upgrade_record, validate_record, write_record_atomic
from leaderboard.add import add_record
from leaderboard.cli import main
from leaderboard.holdout import GAP_Z, MIN_GAP_NATS, HeldOutGap, entry_test_gap, gap_se, gap_threshold, run_test_gap
from leaderboard.naming import DEFAULT_RECORDS_DIR
from leaderboard.site import build_site
from tests.leaderboard.factory import failed_record, make_record, method_hash, write_board
from tests.leaderboard.html_tables import parse_boards

SPLIT = "c" * 64
LAB = "lab"  # a track without official data: add checks hashes against the board


def section(loss: float, loss_se: float = 0.004, val_loss_se: float = 0.003, bpb: float | None = None) -> dict:
    return {"loss": loss, "bpb": bpb, "loss_se": loss_se, "val_loss_se": val_loss_se, "tokens": 32_512,
            "windows": 254, "split_hash": SPLIT, "by": "slowrun leaderboard add --verify --test-data"}


def scored(index: int, test_loss: float, **overrides) -> dict:
    """make_record's run (val loss 3.0 + 0.01 * index) with a test score, at the schema that has one."""
    return make_record(index, **{"schema_version": 3, "test": section(test_loss), **overrides})


def test_the_threshold_worked_by_hand():
    assert (GAP_Z, MIN_GAP_NATS) == (3.0, 0.001)
    assert gap_se(0.003, 0.004) == pytest.approx(0.005, rel=1e-15)
    assert gap_threshold(0.005) == pytest.approx(0.015, rel=1e-15)
    assert gap_threshold(gap_se(1e-5, 1e-5)) == 0.001  # 3 · 1.41e-5 is below the minimum
    run = run_test_gap(scored(0, 3.016))
    assert run.gap == pytest.approx(0.016) and run.threshold == pytest.approx(0.015) and run.flagged
    assert not run_test_gap(scored(0, 3.014)).flagged
    assert run_test_gap(scored(0, 2.9)).flagged is False  # lower on test is never a problem
    assert run_test_gap(make_record(0)) is None


def test_an_entry_is_judged_on_its_scored_runs_mean_gap_and_mean_standard_error():
    # seeds with val 3.000 and 3.010 scored at 3.010 and 3.030; standard errors 0.005 and 0.010 (6-8-10)
    first = HeldOutGap(loss=3.010, val_loss=3.000, se=gap_se(0.003, 0.004), split_hashes=(SPLIT,))
    second = HeldOutGap(loss=3.030, val_loss=3.010, se=gap_se(0.006, 0.008), split_hashes=(SPLIT,))
    entry = entry_test_gap([first, None, second])
    assert (entry.loss, entry.val_loss, entry.scored) == (pytest.approx(3.020), pytest.approx(3.005), 2)
    assert entry.gap == pytest.approx(0.015) and entry.se == pytest.approx(0.0075)
    assert entry.threshold == pytest.approx(0.0225) and not entry.flagged  # 0.015 < 3 · 0.0075
    assert second.flagged is False and HeldOutGap(3.04, 3.01, 0.005).flagged  # 0.030 > 0.015
    assert entry_test_gap([None, None]) is None


def test_the_board_shows_test_loss_after_val_loss_and_flags_a_gap_far_above_chance(tmp_path):
    records = [
        scored(0, 3.100),  # val 3.00: a gap of 0.100, far above 0.015
        scored(1, 3.022),  # val 3.01: 0.012, an ordinary gap
        scored(2, 3.036),  # val 3.02: 0.016, just past the threshold
        make_record(3),  # never scored on the test split
    ]
    write_board(tmp_path / "records", records)
    report = build_site(tmp_path / "records", tmp_path / "site", workers=1)
    assert report.refused == () and report.skipped == ()
    html = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    board = parse_boards(html)[0]
    assert board.headers[:4] == ["Rank", "Method", "Val loss", "Test loss"]
    assert board.column("Method") == ["method-0", "method-1", "method-2", "method-3"]
    assert board.column("Test loss") == ["3.1000 ⚑", "3.0220", "3.0360 ⚑", "—"]
    flags = re.findall(r'<span class="flag test-gap" title="([^"]*)">⚑</span>', html)
    assert len(flags) == 2
    assert flags[0].startswith("test − val = +0.1000 nats/token; the gap&#39;s standard error is 0.0050, so chance "
                               "allows up to 0.0150") and "Flagged" in flags[0]

    def page(folder: str, method: str) -> str:
        return next(text for p in (tmp_path / "site" / folder).glob("*.html")
                    if f">{method}" in (text := p.read_text(encoding="utf-8")))

    far, ordinary, unscored = page("e", "method-0"), page("e", "method-1"), page("e", "method-3")
    assert "3.10000" in far and "⚑ large gap" in far and SPLIT[:12] in far and f"split hash {SPLIT}" in far
    assert "+0.10000" in far
    assert "3.02200" in ordinary and "large gap" not in ordinary and "not flagged" in ordinary
    assert "Test loss" not in unscored
    record_page = page("r", "method-0")
    assert "3.1000 ± 0.0040" in record_page and "val loss ± 0.0030" in record_page and "⚑ large gap" in record_page


def test_seeds_show_their_own_test_loss_and_the_entry_its_mean(tmp_path):
    seeded = dict(method__name="seeded", method__hash=method_hash("seeded"))
    records = [scored(0, 3.010, seed=0, result__val_loss=3.000, **seeded),
               scored(1, 3.030, seed=1, result__val_loss=3.010, **seeded),
               make_record(2, seed=2, result__val_loss=3.020, **seeded)]
    records[1]["test"].update(loss_se=0.008, val_loss_se=0.006)
    write_board(tmp_path / "records", records)
    build_site(tmp_path / "records", tmp_path / "site", workers=1)
    board = parse_boards((tmp_path / "site" / "index.html").read_text(encoding="utf-8"))[0]
    assert board.column("Test loss") == ["3.0200"]  # the two scored runs' mean, not flagged (worked above)
    entry = next((tmp_path / "site" / "e").glob("seeded-*.html")).read_text(encoding="utf-8")
    assert "Test loss (nats/token), 2 of 3 runs" in entry
    assert "+0.01500" in entry and "chance allows up to 0.0225" in entry
    seeds = entry.split("<h2>Seeds</h2>")[1]
    assert re.findall(r'<td class="num" data-sort="[^"]*" title="test − val[^"]*">([^<]*)<', seeds) == [
        "3.01000", "3.03000"]


def test_the_schema_takes_a_test_section_only_at_version_three():
    assert SCHEMA_VERSION == 3
    assert validate_record(scored(0, 3.1)) == []
    older = scored(0, 3.1, schema_version=2)
    assert validate_record(older) == ["test: a schema-3 section in a schema-2 record; a record gains it only when "
                                      "it is filed with it (which sets schema_version to 3 or later)"]
    broken = scored(0, 3.1)
    broken["test"].update(loss=-1.0, split_hash="not a hash", windows=0)
    problems = validate_record(broken)
    assert any(p.startswith("test.loss: must be at least 0") for p in problems)
    assert any(p.startswith("test.split_hash:") for p in problems)
    assert any(p.startswith("test.windows:") for p in problems)
    no_result = scored(0, 3.1, status="failed", result=None, error={"type": "E", "message": "m", "traceback": ""})
    assert any(p.startswith("test: a test score is of the record's result") for p in validate_record(no_result))


def version_one(index: int = 0, **overrides) -> dict:
    """A record as harnesses before graphs wrote it: no `evaluated_by` on its snapshot rows."""
    record = make_record(index, schema_version=1, **overrides)
    for row in record["snapshots"]:
        del row["evaluated_by"]
    return record


def test_upgrading_reads_an_older_record_as_the_board_already_does():
    v1 = version_one()
    upgraded = upgrade_record(v1)
    assert upgraded["schema_version"] == 3 and validate_record(upgraded) == []
    assert {row["evaluated_by"] for row in upgraded["snapshots"]} == {"method code"}
    assert "evaluated_by" not in v1["snapshots"][0]  # a copy
    v2 = make_record(0)
    assert upgrade_record(v2) == {**v2, "schema_version": 3}


def test_every_committed_record_still_loads_and_renders_without_a_test_column(tmp_path):
    files = sorted(DEFAULT_RECORDS_DIR.rglob("*.json"))
    if not files:
        pytest.skip("no records are committed under leaderboard/records")
    for path in files:
        record = load_record(path)
        assert "test" not in record, path
    report = build_site(DEFAULT_RECORDS_DIR, tmp_path / "site", workers=1, published=None)
    assert report.record_count == len(files) and report.skipped == () and report.refused == ()
    for board in parse_boards((tmp_path / "site" / "index.html").read_text(encoding="utf-8")):
        assert "Test loss" not in board.headers


def _run(tmp_path, record, name="run"):
    folder = tmp_path / name
    write_record_atomic(folder / "record.json", record)
    return folder


def test_add_files_the_test_score_of_a_verified_run_once(tmp_path):
    filed_section, calls = section(3.05), []

    def score(run_dir, record):
        calls.append(record["run_id"])
        return filed_section

    run = _run(tmp_path, version_one(track__name=LAB))
    with pytest.raises(LeaderboardError, match="add --verify to --test-data"):
        add_record(run, tmp_path / "records", new_track=True, test_score=score)
    path = add_record(run, tmp_path / "records", new_track=True, verify=lambda *_: [], test_score=score)
    filed = load_record(path)
    assert filed["test"] == filed_section and filed["verified"]["kind"] == "re-evaluated"
    assert filed["schema_version"] == 3 and {r["evaluated_by"] for r in filed["snapshots"]} == {"method code"}
    assert calls == ["run-00000"]
    text = path.read_text()
    # adding it again, with or without the hooks, changes nothing and scores nothing
    assert add_record(run, tmp_path / "records", verify=lambda *_: [], test_score=score) == path
    assert add_record(run, tmp_path / "records") == path
    assert calls == ["run-00000"] and path.read_text() == text


def test_a_run_without_a_result_is_filed_verified_without_a_test_score(tmp_path):
    run = _run(tmp_path, failed_record(0, track__name=LAB))
    path = add_record(run, tmp_path / "records", new_track=True, verify=lambda *_: [], test_score=lambda *_: None)
    filed = load_record(path)
    assert "test" not in filed and filed["verified"]["ok"] and filed["schema_version"] == 2


def test_add_refuses_a_record_that_brings_its_own_test_score(tmp_path):
    run = _run(tmp_path, scored(0, 2.5, track__name=LAB))
    with pytest.raises(LeaderboardError, match="test: only `slowrun leaderboard add --verify --test-data`"):
        add_record(run, tmp_path / "records", new_track=True, verify=lambda *_: [])
    assert not (tmp_path / "records").exists()


def test_cli_test_data_needs_verify(tmp_path, capsys):
    run = _run(tmp_path, make_record(0))
    assert main(["leaderboard", "add", str(run), "--records", str(tmp_path / "records"), "--new-track",
                 "--test-data", str(tmp_path)]) == 2
    assert "--test-data" in capsys.readouterr().err and not (tmp_path / "records").exists()


def test_records_csv_carries_each_runs_test_loss_gap_and_flag():
    from tests.leaderboard.test_csv import csv_rows

    header, rows = csv_rows([scored(0, 3.100), scored(1, 3.012), make_record(2)])
    assert header.index("test_loss") == header.index("val_bpb") + 1
    by_run = {row["run_id"]: row for row in rows}
    far, near, unscored = (by_run[make_record(i)["run_id"]] for i in range(3))
    # val losses 3.00 and 3.01 (make_record); standard errors 0.003 and 0.004 give a threshold of 0.015
    assert float(far["test_gap"]) == pytest.approx(0.100) and far["test_gap_flagged"] == "True"
    assert float(near["test_gap"]) == pytest.approx(0.002) and near["test_gap_flagged"] == "False"
    assert float(far["test_gap_threshold"]) == pytest.approx(0.015) and far["test_split_hash"] == SPLIT
    assert unscored["test_loss"] == "" and unscored["test_gap_flagged"] == ""


def test_the_board_says_whether_the_test_split_was_keyed(tmp_path):
    """A contiguous test split can be rebuilt by anyone, a keyed one only by its maintainers: the record says
    which (`test.selection`), and the pages and records.csv pass it on; older records say nothing."""
    from tests.leaderboard.test_csv import csv_rows

    keyed, contiguous, older = (scored(i, 3.0, test={**section(3.0), **extra})
                                for i, extra in enumerate([{"selection": "keyed"}, {"selection": "contiguous"}, {}]))
    assert [validate_record(r) for r in (keyed, contiguous, older)] == [[], [], []]
    assert validate_record(scored(3, 3.0, test={**section(3.0), "selection": "secret"})) == [
        "test.selection: expected one of keyed, contiguous, got 'secret'"]
    assert [run_test_gap(r).keyed for r in (keyed, contiguous, older)] == [True, False, None]
    assert entry_test_gap([run_test_gap(keyed), run_test_gap(keyed)]).keyed is True
    assert entry_test_gap([run_test_gap(keyed), run_test_gap(contiguous)]).keyed is None  # they differ

    header, rows = csv_rows([keyed, contiguous, older])
    assert header.index("test_split_keyed") == header.index("test_split_hash") + 1
    assert [row["test_split_keyed"] for row in rows] == ["True", "False", ""]

    records = tmp_path / "records"
    write_board(records, [keyed])
    build_site(records, tmp_path / "site", workers=1)
    page = next((tmp_path / "site" / "e").glob("*.html")).read_text(encoding="utf-8")
    assert "keyed: sampled by the maintainers&#39; secret" in page or "keyed: sampled by the maintainers' secret" in page
