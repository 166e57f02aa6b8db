"""Honest badges and a build that re-checks every record: what a badge says is exactly what was done, and a
record copied into the folder by hand is held to the rules `leaderboard add` enforces."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from harness.errors import LeaderboardError
from harness.formats.records import write_record_atomic
from leaderboard.add import add_record
from leaderboard.rows import provenance_of
from leaderboard.site import build_site
from tests.leaderboard.factory import make_record, write_board
from tests.leaderboard.html_tables import parse_boards

SYNTHETIC_HASH = "1a9a8fd7bf3f017004ddd833eb370eb8e9b308a77dd3b52cbb8f4f4cf63b68a0"  # official synthetic data


def board(site) -> list:
    return parse_boards((site / "index.html").read_text(encoding="utf-8"))


# --- badges ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("verified, sandbox, kind, text", [
    (None, {"kind": "landlock", "abi": 7}, "measured", "measured, sandboxed"),
    (None, None, "measured", "measured, not sandboxed"),  # a record from before the sandbox
    ({"ok": False, "by": "x"}, {"kind": "landlock", "abi": 7}, "measured", "measured, sandboxed"),
    ({"ok": "yes"}, {"kind": "landlock", "abi": 7}, "measured", "measured, sandboxed"),  # only a literal true
    ({"ok": True, "by": "slowrun leaderboard add --verify"}, {"kind": "landlock", "abi": 7}, "re-evaluated",
     "re-evaluated, sandboxed"),
    # a record claiming more than a re-evaluation is still read as one: nothing here re-runs training
    ({"ok": True, "kind": "reproduced", "tolerance_nats": 0.001, "seeds": 3}, {"kind": "none"}, "re-evaluated",
     "re-evaluated, not sandboxed"),
])
def test_the_provenance_kind_follows_what_was_done(verified, sandbox, kind, text):
    record = make_record(0)
    del record["sandbox"]
    if sandbox is not None:
        record["sandbox"] = sandbox
    if verified is not None:
        record["verified"] = verified
    provenance = provenance_of(record)
    assert (provenance.kind, provenance.text) == (kind, text)


def test_re_evaluated_says_training_was_not_re_run():
    record = make_record(0, verified={"ok": True})
    title = provenance_of(record).title
    assert "scored this run's snapshots again" in title and "Training was not re-run" in title
    assert "reproduc" not in title


def test_a_re_evaluated_run_on_the_board_is_never_called_verified_or_reproduced(tmp_path):
    """The issue's case: weights from anywhere (trained on validation, say) put into a run folder pass a
    re-evaluation, because the losses do follow from the weights. The board must say only that."""
    run = tmp_path / "run"
    write_record_atomic(run / "record.json", make_record(0, track__data_hash=SYNTHETIC_HASH))
    filed = add_record(run, tmp_path / "records", verify=lambda run_dir, record: [])
    stored = json.loads(filed.read_text(encoding="utf-8"))["verified"]
    assert stored["ok"] is True and stored["kind"] == "re-evaluated" and "training was not re-run" in stored["what"]

    build_site(tmp_path / "records", tmp_path / "site", workers=1)
    (table,) = board(tmp_path / "site")
    assert table.column("Provenance") == ["re-evaluated"]
    html = "".join(p.read_text(encoding="utf-8") for p in (tmp_path / "site").rglob("*.html"))
    assert 'class="badge provenance-re-evaluated"' in html
    assert "provenance-verified" not in html and ">verified<" not in html and ">reproduced<" not in html
    csv_text = (tmp_path / "site" / "records.csv").read_text(encoding="utf-8")
    assert "re-evaluated, sandboxed" in csv_text


def test_add_without_verify_refuses_a_record_that_claims_verification(tmp_path):
    run = tmp_path / "run"
    write_record_atomic(run / "record.json", make_record(0, track__data_hash=SYNTHETIC_HASH,
                                                         verified={"ok": True, "by": "me"}))
    with pytest.raises(LeaderboardError, match="verified: only `slowrun leaderboard add --verify` writes this field"):
        add_record(run, tmp_path / "records")
    assert not (tmp_path / "records").exists()
    # with --verify the claim is replaced by what this add did
    filed = add_record(run, tmp_path / "records", verify=lambda run_dir, record: [])
    assert json.loads(filed.read_text(encoding="utf-8"))["verified"]["by"] == "slowrun leaderboard add --verify"


def test_a_run_cannot_pass_itself_off_as_a_published_result(tmp_path):
    claim = {"kind": "reported", "repository": "https://github.com/qlabs-eng/slowrun", "commit": "0" * 40,
             "file": "README.md"}
    run = tmp_path / "run"
    write_record_atomic(run / "record.json", make_record(0, track__data_hash=SYNTHETIC_HASH, provenance=claim))
    with pytest.raises(LeaderboardError, match="provenance.kind: 'reported' is for Slowrun's published results"):
        add_record(run, tmp_path / "records")


# --- build re-checks every record ----------------------------------------------------------------------

def cheat(index: int = 1) -> dict:
    """The issue's record dropped straight into the folder: val -1.0 and 50 epochs on a 1-epoch budget."""
    return make_record(index, method__name="cheat", result__val_loss=-1.0, budget_epochs=1.0, metered__epochs=50.0)


def test_build_refuses_an_out_of_bounds_record_instead_of_ranking_it(tmp_path):
    write_board(tmp_path / "records", [make_record(0, method__name="honest"), cheat()])
    report = build_site(tmp_path / "records", tmp_path / "site", workers=1)

    assert report.record_count == 1 and report.skipped == ()
    assert [item.relpath for item in report.refused] == ["synthetic/run-00001.json"]
    reason = report.refused[0].reason
    # each broken bound, as `leaderboard add` words it (100,000-token epochs: 800,000 tokens are 8 of them)
    assert "result.val_loss: a loss cannot be negative, got -1.0" in reason
    assert "metered.epochs: 50.0 is more than the budget of 1.0 epochs" in reason
    assert "metered.train_tokens: 800,000 is more than 1.0 epochs of 100,000 tokens allow (100,000)" in reason
    assert reason.startswith("synthetic/run-00001.json: refused, 3 problem(s):")

    (table,) = board(tmp_path / "site")
    assert table.column("Method") == ["honest"] and table.column("Rank") == ["1"]
    assert "unranked" not in table.bodies
    site = tmp_path / "site"
    assert not any("cheat" in p.name or "00001" in p.name for p in site.rglob("*"))
    assert "run-00001" not in (site / "records.json").read_text(encoding="utf-8")
    text = (site / "build-report.txt").read_text(encoding="utf-8")
    assert "records refused (they break a rule of `leaderboard add`; not ranked): 1" in text
    assert "- synthetic/run-00001.json" in text and "a loss cannot be negative" in text
    index = (site / "index.html").read_text(encoding="utf-8")
    assert "1 refused" in index and 'class="refused"' in index and "a loss cannot be negative" in index
    assert "refused 1 records out of bounds" in report.summary()


def test_build_refuses_what_add_refuses_beyond_bounds(tmp_path):
    records = [make_record(0, method__name="honest"),
               make_record(1, method__name="good\u202eeman"),  # a bidirectional override
               make_record(2, provenance={"kind": "reported", "repository": "x", "commit": "0" * 40, "file": "y"}),
               make_record(3, created="2031-01-01T00:00:00Z"),  # after `now` below
               make_record(4, result__val_loss=2.0, track__name="synthetic")]  # below the synthetic floor 2.137
    write_board(tmp_path / "records", records)
    now = datetime(2030, 1, 1, tzinfo=timezone.utc)
    report = build_site(tmp_path / "records", tmp_path / "site", workers=1, now=now)
    reasons = {item.relpath.split("/")[-1]: item.reason for item in report.refused}
    assert sorted(reasons) == ["run-00001.json", "run-00002.json", "run-00003.json", "run-00004.json"]
    assert "U+202E" in reasons["run-00001.json"]
    assert "provenance.kind: 'reported'" in reasons["run-00002.json"]
    assert "created: 2031-01-01T00:00:00Z is in the future" in reasons["run-00003.json"]
    assert "result.val_loss: 2.0 is below 2.137" in reasons["run-00004.json"]
    tables = board(tmp_path / "site")
    assert [t.title for t in tables] == ["synthetic · tiny data " + "a" * 12]  # no "published results" table
    assert tables[0].column("Method") == ["honest"]


def test_a_build_of_refused_records_only_is_an_empty_board(tmp_path):
    write_board(tmp_path / "records", [cheat(0), cheat(1)])
    report = build_site(tmp_path / "records", tmp_path / "site", workers=1)
    assert report.record_count == 0 and len(report.refused) == 2
    index = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    assert "No valid records yet" in index and "2 refused" in index


@pytest.mark.parametrize("ascii_only", [True, False])
def test_a_bidirectional_control_is_found_written_as_is_or_escaped(tmp_path, ascii_only):
    record = make_record(0, method__name="good\u202eeman")
    folder = tmp_path / "records" / "synthetic"
    folder.mkdir(parents=True)
    text = json.dumps(record, indent=2, sort_keys=True, ensure_ascii=ascii_only)
    assert ("\\u202e" in text) is ascii_only  # the two ways a JSON file can hold the character
    (folder / "run.json").write_text(text, encoding="utf-8")
    report = build_site(tmp_path / "records", tmp_path / "site", workers=1)
    assert report.record_count == 0 and "U+202E" in report.refused[0].reason
