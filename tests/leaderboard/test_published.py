"""Slowrun's published tables: the data file against values copied by hand from the README as published
(qlabs-eng/slowrun, commit fd342f02affab8b39579761115c61b7d975f0430), and their records on the board."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from harness.eval.efficiency import data_efficiency
from harness.errors import LeaderboardError
from harness.formats.records import validate_record
from leaderboard.published import DEFAULT_PUBLISHED, load_published, published_records, published_time_seconds
from leaderboard.site import build_site
from tests.leaderboard.factory import make_record, write_board
from tests.leaderboard.html_tables import parse_boards

COMMIT = "fd342f02affab8b39579761115c61b7d975f0430"
MIRROR = Path("/work/.mirror/qlabs-eng+slowrun/repo")


def rows_by_class() -> dict[str, list[dict]]:
    return {t["class"]: t["rows"] for t in load_published()["tables"]}


def test_row_counts_per_track_and_the_cited_commit():
    data = load_published()
    assert data["source"]["commit"] == COMMIT and data["track"] == "fineweb"
    assert {k: len(v) for k, v in rows_by_class().items()} == {"limited": 20, "tiny": 14, "two-hour": 6,
                                                               "unlimited": 12}


@pytest.mark.parametrize("compute_class,number,loss,date,time,script_commit", [
    ("limited", 1, "3.402", "02/26/26", "~47 mins", "0d49316316dc6684049a679e03958c3fb612a8fd"),
    ("limited", 20, "3.195", "04/26/26", "59.0 mins", "571b296eda47bdd291937d017ea49f23317088cb"),
    ("tiny", 2, "3.410", "03/02/26", "14.4 mins", "efa7f2ed81ac0b2aa9d5954c9b56ee56786c1934"),
    ("tiny", 14, "3.307", "06/14/26", "14.1 mins", "d1fbdb76386347f1097ed051f4bebaef2c17758d"),
    ("two-hour", 6, "3.139", "07/02/26", "117.6 mins", "37a4173714365721ad9bdea695a903a84a193208"),
    ("unlimited", 10, "3.024", "03/31/26", "210 hours (7xH100 node)", "dceb3e9d5b6153058b8dadf36af84f6a7c622fdf"),
    ("unlimited", 12, "2.987", "05/28/26", "80 hours (5 nodes, 8xH100)", "d1c084e26a9cd5063c403c9f349ccdd37465abae"),
])
def test_values_as_published(compute_class, number, loss, date, time, script_commit):
    row = rows_by_class()[compute_class][number - 1]
    assert row["number"] == number
    assert (row["val_loss_text"], row["date"], row["time"]) == (loss, date, time)
    assert row["val_loss"] == float(loss)
    assert script_commit in row["script"]


def test_descriptions_and_contributors_as_published():
    limited = rows_by_class()["limited"]
    assert limited[8]["description"] == "Add [exclusive self attention (XSA)](https://arxiv.org/pdf/2603.09078)"
    assert [c["name"] for c in limited[10]["contributors"]] == ["@ChinmayK0607", "@ms337"]


@pytest.mark.skipif(not MIRROR.is_dir(), reason="no local mirror of qlabs-eng/slowrun")
def test_every_loss_appears_in_the_readme_at_the_cited_commit():
    readme = subprocess.run(["git", "-C", str(MIRROR), "show", f"{COMMIT}:README.md"], capture_output=True,
                            text=True, check=True).stdout
    for compute_class, rows in rows_by_class().items():
        for row in rows:
            assert f"{row['number']} | {row['val_loss_text']} | " in readme, (compute_class, row["number"])


def test_published_rows_become_valid_reported_records_with_the_harness_efficiency():
    records = published_records()
    assert len(records) == 52
    for loaded in records:
        assert validate_record(loaded.record) == []
        assert loaded.record["provenance"]["kind"] == "reported"
        assert loaded.record["provenance"]["commit"] == COMMIT
    first = next(r.record for r in records if r.relpath == "published/limited/01.json")
    # by hand on the fineweb curve: 3.402 lies between (200M, 3.703) and (400M, 3.370)
    expected_tokens = 200e6 + (3.703 - 3.402) / (3.703 - 3.370) * 200e6
    assert first["result"]["data_efficiency"]["multiplier"] == pytest.approx(expected_tokens / 100e6, rel=1e-12)
    assert first["created"] == "2026-02-26T00:00:00Z"


def test_a_long_published_description_is_shortened_in_the_name_and_kept_whole(tmp_path):
    """A README row's description can be a paragraph; a record's name is one line of at most 100 characters."""
    data = load_published()
    row = data["tables"][0]["rows"][0]
    row["description"] = "Add " + "a very long list of changes, " * 10 + "and one more"
    path = tmp_path / "published.json"
    path.write_text(json.dumps(data))
    record = published_records(path)[0].record
    assert validate_record(record) == []
    assert len(record["method"]["name"]) == 100 and record["method"]["name"].endswith("…")
    assert record["method"]["name"].startswith(f"#{row['number']} Add a very long list")
    assert record["method"]["description"] == row["description"]


def test_a_loss_the_curve_cannot_place_is_a_bound_with_its_flag():
    placed = data_efficiency(2.5, "fineweb")
    assert placed.multiplier is None and placed.bound.startswith(">") and placed.flag == "below-table"


def test_published_times_are_read_for_sorting_only():
    assert published_time_seconds("~47 mins") == 47 * 60
    assert published_time_seconds("6h 44m") == 6 * 3600 + 44 * 60
    assert published_time_seconds("~44h (2 nodes, 8xH100)") == 44 * 3600
    assert published_time_seconds("210 hours (7xH100 node)") == 210 * 3600
    assert published_time_seconds("soon") is None


def test_reported_tables_are_separate_and_badged(tmp_path):
    write_board(tmp_path / "records", [make_record(0, track__name="fineweb", compute__class="limited")])
    report = build_site(tmp_path / "records", tmp_path / "site", workers=1, published=DEFAULT_PUBLISHED)
    assert report.record_count == 1 and report.published_count == 52
    html = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    boards = parse_boards(html)
    measured = [b for b in boards if "published results" not in b.title]
    reported = [b for b in boards if "published results" in b.title]
    assert [b.title for b in measured] == ["fineweb · limited data aaaaaaaaaaaa"]
    assert sorted(len(b.bodies["ranked"]) for b in reported) == [6, 12, 14, 20]
    assert all(set(b.column("Provenance")) == {"reported"} for b in reported)
    assert measured[0].column("Provenance") == ["measured"]  # sandboxed: no flag beside it, no Status column
    assert "Status" not in measured[0].headers
    limited = next(b for b in reported if "limited" in b.title)
    assert limited.column("Val loss")[0] == "3.1950"  # best published limited result ranks first
    assert COMMIT[:12] in html


def test_a_bad_published_file_is_a_clear_error(tmp_path):
    data = json.loads(DEFAULT_PUBLISHED.read_text(encoding="utf-8"))
    data["tables"][0]["rows"][0]["val_loss"] = 3.5
    bad = tmp_path / "published.json"
    bad.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(LeaderboardError, match="differs from the published text"):
        load_published(bad)
