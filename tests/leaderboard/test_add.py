"""Accepting records into the board: checks on status and data hash, safe names, no overwrites.

These tests run on a track without official data ("lab"), where the board's own hashes decide; the
official tracks and the other refusals are tested in test_verify.py.
"""

from __future__ import annotations

import json

import pytest

from harness.errors import LeaderboardError, RecordError
from harness.formats.records import load_record, record_to_json, write_record_atomic
from leaderboard.add import add_record, parse_known_tracks
from tests.leaderboard import factory
from tests.leaderboard.factory import DATA_HASH, OTHER_DATA_HASH

TRACK = "lab"  # not in harness/rules/official_hashes.py


def make_record(index: int = 0, **overrides) -> dict:
    return factory.make_record(index, **{"track__name": TRACK, **overrides})


def failed_record(index: int = 0, **overrides) -> dict:
    return factory.failed_record(index, **{"track__name": TRACK, **overrides})


def run_dir_with(tmp_path, record, name="run"):
    folder = tmp_path / name
    write_record_atomic(folder / "record.json", record)
    return folder


def test_new_track_needs_explicit_consent(tmp_path):
    run = run_dir_with(tmp_path, make_record(0))
    with pytest.raises(LeaderboardError, match="new to this board.*--new-track"):
        add_record(run, tmp_path / "records")
    assert not (tmp_path / "records").exists()
    path = add_record(run, tmp_path / "records", new_track=True)
    assert path == tmp_path / "records" / TRACK / "method-0-run-00000.json"
    assert path.read_text(encoding="utf-8") == record_to_json(make_record(0))


def test_data_hash_must_match_the_board(tmp_path):
    records = tmp_path / "records"
    add_record(run_dir_with(tmp_path, make_record(0)), records, new_track=True)
    other = run_dir_with(tmp_path, make_record(1, track__data_hash=OTHER_DATA_HASH), "other")
    with pytest.raises(LeaderboardError, match=f"data {OTHER_DATA_HASH[:12]}.*knows this track as data {DATA_HASH[:12]}"):
        add_record(other, records)
    same = run_dir_with(tmp_path, make_record(2), "same")
    assert add_record(same, records).exists()  # found in the board's existing records


def test_known_tracks_given_take_precedence(tmp_path):
    records = tmp_path / "records"
    add_record(run_dir_with(tmp_path, make_record(0)), records, new_track=True)
    other = run_dir_with(tmp_path, make_record(1, track__data_hash=OTHER_DATA_HASH), "other")
    path = add_record(other, records, known_tracks=parse_known_tracks([f"{TRACK}={OTHER_DATA_HASH}"]))
    assert load_record(path)["track"]["data_hash"] == OTHER_DATA_HASH
    fresh = run_dir_with(tmp_path, make_record(2), "fresh")
    with pytest.raises(LeaderboardError):
        add_record(fresh, records, known_tracks={TRACK: [OTHER_DATA_HASH]})
    # a hash given for an unknown track opens it without --new-track
    novel = run_dir_with(tmp_path, make_record(3, track__name="fineweb"), "novel")
    assert add_record(novel, records, known_tracks={"fineweb": {DATA_HASH}}).parent.name == "fineweb"


def test_adding_twice_is_harmless_but_a_different_file_is_never_replaced(tmp_path):
    records = tmp_path / "records"
    run = run_dir_with(tmp_path, make_record(0))
    first = add_record(run, records, new_track=True)
    assert add_record(run, records) == first
    before = first.read_bytes()
    changed = run_dir_with(tmp_path, make_record(0, seed=99), "changed")
    with pytest.raises(LeaderboardError, match="never overwritten"):
        add_record(changed, records)
    assert first.read_bytes() == before


def test_failed_runs_are_records_too(tmp_path):
    path = add_record(run_dir_with(tmp_path, failed_record(4)), tmp_path / "records", new_track=True)
    assert load_record(path)["status"] == "failed"


def test_invalid_or_missing_records_are_refused(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    with pytest.raises(LeaderboardError, match="record.json"):
        add_record(folder, tmp_path / "records", new_track=True)
    (folder / "record.json").write_text(json.dumps(make_record(0, status="running")))
    with pytest.raises(RecordError, match="status: must be one of") as caught:
        add_record(folder, tmp_path / "records", new_track=True)
    assert str(folder / "record.json") in str(caught.value)
    assert not (tmp_path / "records").exists()


def test_hostile_names_stay_inside_the_records_folder(tmp_path):
    record = make_record(0, method__name="../../evil/<x>", run_id="../../../etc/passwd", track__name="..")
    path = add_record(run_dir_with(tmp_path, record), tmp_path / "records", new_track=True)
    assert path.resolve().is_relative_to((tmp_path / "records").resolve())
    assert path.parent.parent == tmp_path / "records"
    assert ".." not in path.relative_to(tmp_path / "records").parts


def test_a_record_file_can_be_given_directly(tmp_path):
    run = run_dir_with(tmp_path, make_record(0))
    assert add_record(run / "record.json", tmp_path / "records", new_track=True).exists()


@pytest.mark.parametrize("pair", ["synthetic", "=abc", "synthetic=", ""])
def test_known_tracks_syntax_errors_say_the_form(pair):
    with pytest.raises(LeaderboardError, match="NAME=DATA_HASH"):
        parse_known_tracks([pair])
