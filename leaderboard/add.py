"""Accepting a finished run's record into the board's records folder.

What is checked before a record joins: it is a valid record of a finished run, and its track's data
hash is one the board knows for that track (given by the maintainer, or carried by records already on
the board), because a record on other data would otherwise sit in the board under the same name. A
track the board has never seen needs an explicit `new_track`. The file is filed under a name derived
from the track, method and run, written atomically, and an existing different file is never replaced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

from harness.errors import LeaderboardError
from harness.records import RECORD_FILENAME, STATUSES, load_record, record_to_json, write_text_atomic
from leaderboard.collect import collect_records
from leaderboard.naming import DEFAULT_RECORDS_DIR, hash_prefix, slug

FINISHED_STATUSES = frozenset(STATUSES)  # every status a record can carry is the end of a run


def parse_known_tracks(pairs: Iterable[str]) -> dict[str, set[str]]:
    """`NAME=DATA_HASH` strings (the form the command line takes) as {track name: {hashes}}."""
    known: dict[str, set[str]] = {}
    for pair in pairs:
        name, sep, data_hash = pair.partition("=")
        if not sep or not name.strip() or not data_hash.strip():
            raise LeaderboardError(f"--known-tracks takes NAME=DATA_HASH, got {pair!r}")
        known.setdefault(name.strip(), set()).add(data_hash.strip())
    return known


def record_destination(record: dict, records_dir: Path) -> Path:
    """records/<track>/<method>-<run_id>.json, each part reduced to file-name-safe characters."""
    return records_dir / slug(record["track"]["name"]) / (
        f"{slug(record['method']['name'])}-{slug(record['run_id'])}.json")


def board_track_hashes(records_dir: Path) -> dict[str, set[str]]:
    """Data hashes per track name among the valid records already on the board."""
    hashes: dict[str, set[str]] = {}
    if records_dir.is_dir():
        for loaded in collect_records(records_dir)[0]:
            track = loaded.record["track"]
            hashes.setdefault(track["name"], set()).add(track["data_hash"])
    return hashes


def add_record(run_dir: str | Path, records_dir: str | Path = DEFAULT_RECORDS_DIR, *,
               known_tracks: Mapping[str, Iterable[str]] | None = None, new_track: bool = False) -> Path:
    """File RUN_DIR/record.json (or a record file given directly) into the board; return where it went.

    Hashes given in `known_tracks` for the record's track take precedence over the ones found on the
    board. Adding the same record twice is a no-op; a different file at the same place is refused.
    """
    run_dir, records_dir = Path(run_dir), Path(records_dir)
    source = run_dir / RECORD_FILENAME if run_dir.is_dir() else run_dir
    if not source.is_file():
        raise LeaderboardError(f"{source} not found: pass a run folder holding {RECORD_FILENAME}, or the file")
    record = load_record(source)
    if record["status"] not in FINISHED_STATUSES:
        raise LeaderboardError(f"{source}: status {record['status']!r} is not a finished run; wait for the run "
                               "to end")

    track, data_hash = record["track"]["name"], record["track"]["data_hash"]
    given = {name: set(hashes) for name, hashes in (known_tracks or {}).items()}
    expected = given.get(track) or board_track_hashes(records_dir).get(track, set())
    if expected and data_hash not in expected:
        shown = ", ".join(sorted(hash_prefix(h) for h in expected))
        raise LeaderboardError(
            f"{source}: track {track!r} ran on data {hash_prefix(data_hash)}, but the board knows this track as "
            f"data {shown}; re-run on the track's official prepared data (check `slowrun data info`)")
    if not expected and not new_track:
        raise LeaderboardError(f"{source}: track {track!r} is new to this board; pass --new-track to open a "
                               "table for it, or --known-tracks NAME=HASH to state the expected data")

    destination = record_destination(record, records_dir)
    text = record_to_json(record)
    if destination.exists():
        try:
            existing = destination.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            existing = None
        if existing == text:
            return destination
        raise LeaderboardError(f"{destination} already exists with different content; a record on the board is "
                               "never overwritten: remove it first if it must be replaced")
    write_text_atomic(destination, text)
    return destination
