"""Finding and reading the record files a board is built from, and setting aside those it must not rank.

A broken file must never break the board: it is set aside with the reason, and the reason goes into
the build report. A readable record whose content breaks a rule `leaderboard add` enforces (a loss no
model reaches, more data than its budget, a claim only the board may make: leaderboard/verify.py) is
refused the same way by `screen_records`, whether or not it came in through `add`: a file dropped
into the records folder by hand is checked exactly as an added one. Files are visited in sorted order of their path relative to the records folder, so
the outcome does not depend on the file system's listing order or on where the folder lives.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from datetime import datetime
from typing import Mapping

from harness.errors import LeaderboardError, RecordError
from harness.formats.records import parse_record
from harness.rules.official_hashes import KNOWN_FLOORS
from leaderboard.verify import record_problems, refusal_text


@dataclass(frozen=True)
class LoadedRecord:
    relpath: str  # posix path relative to the records folder: the record's identity on the board
    record: dict
    text: str  # the file as accepted, republished unchanged beside the record's page


@dataclass(frozen=True)
class SkippedFile:
    relpath: str
    reason: str


def record_files(records_dir: Path) -> list[tuple[str, Path]]:
    """Every `*.json` under the folder (hidden files excluded) with its relative posix path, sorted."""
    found = []
    for path in records_dir.rglob("*.json"):
        relative = path.relative_to(records_dir)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        found.append((relative.as_posix(), path))
    return sorted(found)


def collect_records(records_dir: str | Path) -> tuple[list[LoadedRecord], list[SkippedFile]]:
    """The valid records and the skipped files; a run (run_id) appearing twice is kept once."""
    records_dir = Path(records_dir)
    if not records_dir.is_dir():
        raise LeaderboardError(f"records folder {records_dir} does not exist; pass the folder of accepted "
                               "records with --records")
    loaded: list[LoadedRecord] = []
    skipped: list[SkippedFile] = []
    first_file_of_run: dict[str, str] = {}
    for relpath, path in record_files(records_dir):
        try:
            text = path.read_text(encoding="utf-8")
            record = parse_record(text, source=relpath)
        except (OSError, UnicodeDecodeError) as exc:
            skipped.append(SkippedFile(relpath, f"{relpath}: cannot read the file ({type(exc).__name__})"))
            continue
        except RecordError as exc:
            skipped.append(SkippedFile(relpath, str(exc)))
            continue
        run_id = record["run_id"]
        if run_id in first_file_of_run:
            skipped.append(SkippedFile(relpath, f"{relpath}: run {run_id!r} is already on the board as "
                                                f"{first_file_of_run[run_id]}; each run is listed once"))
            continue
        first_file_of_run[run_id] = relpath
        loaded.append(LoadedRecord(relpath, record, text))
    return loaded, skipped


def screen_records(loaded: list[LoadedRecord], floors: Mapping[str, float] = KNOWN_FLOORS, *,
                   now: datetime | None = None) -> tuple[list[LoadedRecord], list[SkippedFile]]:
    """The records that keep every rule of leaderboard/verify.py, and the refused ones with every problem.

    The same check `leaderboard add` makes (one copy of each rule: `record_problems`), so a record cannot
    reach the board by being copied into the folder instead of added. `now` is the time a `created`
    stamp may not be later than (default: this clock).
    """
    kept: list[LoadedRecord] = []
    refused: list[SkippedFile] = []
    for item in loaded:
        problems = record_problems(item.record, floors, now=now, text=item.text)
        if problems:
            refused.append(SkippedFile(item.relpath, refusal_text(item.relpath, problems)))
        else:
            kept.append(item)
    return kept, refused
