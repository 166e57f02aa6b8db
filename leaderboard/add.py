"""Accepting a finished run's record into the board's records folder.

What is checked before a record joins, all before anything is written:
- it is a valid record of a finished run, with no bidirectional control characters in its strings,
  numbers a real run could have produced (leaderboard/verify.py: losses above the track's floor, data
  within the budget, scores in [0, 1], a past date, ensembles of its own snapshots weighing 1) and no
  field only the board writes (`provenance` of kind reported, `reported`, and `verified` unless this
  add verifies); `leaderboard build` applies the same rules (`record_problems`) to every file again;
- with a method folder given, the folder hashes to the record's `method.hash`;
- its track's data hash is official (harness/rules/official_hashes.py) for a track that has official data,
  else one the board knows for that track (given by the maintainer, or carried by records already on
  the board), because a record on other data would otherwise sit in the board under the same name. A
  track the board has never seen needs an explicit `new_track`;
- its run is not on the board already in another file: each run is listed once;
- the optional `verify` hook (re-evaluating the run folder's snapshots) finds nothing wrong; the filed
  record then carries `verified` (`{"ok": true, "kind": "re-evaluated", ...}`), which the board shows as
  provenance "re-evaluated": the numbers follow from the weights. Training is not re-run, so this is
  never called reproduced (leaderboard/rows.py, `provenance_of`);
- with the optional `test_score` hook too (`--test-data DIR`: harness/run/reverify.py scores the verified
  run's final predictor on a held-out test split), the filed record carries the `test` section it returns,
  at record schema 3 (`upgrade_record`). Only this writes `test`: a record that arrives with one is refused.
The file is filed under a name derived from the track, method and run, written atomically, and an
existing different file is never replaced; adding the identical record again is a no-op. `dry_run`
checks everything and writes nothing. A submission bundle (leaderboard/bundle.py) is filed run by run,
after its files are checked against its manifest, with its own method folder as the method to hash; when
verifying, the snapshots it names by URL are fetched and sha256-checked first (`with_fetched_weights`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Iterable, Mapping

from harness.errors import LeaderboardError, SlowrunError
from harness.rules.official_hashes import KNOWN_FLOORS, official_hashes
from harness.common.atomic import write_text_atomic
from harness.formats.records import RECORD_FILENAME, STATUSES, load_record, record_to_json, upgrade_record
from leaderboard.bundle import is_bundle, read_bundle, with_fetched_weights
from leaderboard.collect import LoadedRecord, collect_records
from leaderboard.naming import DEFAULT_RECORDS_DIR, hash_prefix, slug
from leaderboard.storage import default_cache_dir
from leaderboard.verify import method_hash_problems, record_problems, refusal_text, unasked_verification_problems

FINISHED_STATUSES = frozenset(STATUSES)  # every status a record can carry is the end of a run

Verifier = Callable[[Path, dict], list[str]]  # (run folder, record) -> problems; empty means fine
TestScorer = Callable[[Path, dict], "dict | None"]  # (run folder, record) -> its `test` section (None: none)


def parse_known_tracks(pairs: Iterable[str]) -> dict[str, set[str]]:
    """`NAME=DATA_HASH` strings (the form the command line takes) as {track name: {hashes}}."""
    known: dict[str, set[str]] = {}
    for pair in pairs:
        name, sep, data_hash = pair.partition("=")
        if not sep or not name.strip() or not data_hash.strip():
            raise LeaderboardError(f"--known-tracks takes NAME=DATA_HASH, got {pair!r}")
        known.setdefault(name.strip(), set()).add(data_hash.strip())
    return known


def parse_floors(pairs: Iterable[str]) -> dict[str, float]:
    """`NAME=LOSS` strings (the form `--floor` takes) as {track name: lowest reachable validation loss}."""
    floors: dict[str, float] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        try:
            floor = float(value)
        except ValueError:
            floor = math.nan
        if not sep or not name.strip() or not math.isfinite(floor) or floor < 0:
            raise LeaderboardError(f"--floor takes NAME=LOSS with a finite loss >= 0 (nats/token), got {pair!r}")
        floors[name.strip()] = floor
    return floors


def record_destination(record: dict, records_dir: Path) -> Path:
    """records/<track>/<method>-<run_id>.json, each part reduced to file-name-safe characters."""
    return records_dir / slug(record["track"]["name"]) / (
        f"{slug(record['method']['name'])}-{slug(record['run_id'])}.json")


def _board(records_dir: Path) -> list[LoadedRecord]:
    return collect_records(records_dir)[0] if records_dir.is_dir() else []


def _track_hashes(board: list[LoadedRecord]) -> dict[str, set[str]]:
    hashes: dict[str, set[str]] = {}
    for loaded in board:
        track = loaded.record["track"]
        hashes.setdefault(track["name"], set()).add(track["data_hash"])
    return hashes


def add_record(run_dir: str | Path, records_dir: str | Path = DEFAULT_RECORDS_DIR, *,
               known_tracks: Mapping[str, Iterable[str]] | None = None, new_track: bool = False,
               floors: Mapping[str, float] | None = None, method_dir: str | Path | None = None,
               verify: Verifier | None = None, dry_run: bool = False, test_score: TestScorer | None = None) -> Path:
    """File RUN_DIR/record.json (or a record file given directly) into the board; return where it went.

    A track with official data (harness/rules/official_hashes.py) must be on one of its official hashes.
    For other tracks, hashes given in `known_tracks` take precedence over the ones found on the board.
    `floors` adds or replaces per-track loss floors over the built-in ones. `method_dir`, when given,
    must hash to the record's `method.hash`. `verify(run folder, record)` returns problems that refuse
    the record. Adding the same record twice is a no-op; a different file at the same place is refused.
    `test_score(run folder, record)`, called once `verify` agreed (it needs `verify`), gives the `test`
    section the filed record carries (None: the run has none to carry, e.g. it failed and has no result).
    """
    if test_score is not None and verify is None:
        raise LeaderboardError("a test score is filed only with a verification: add --verify to --test-data")
    run_dir, records_dir = Path(run_dir), Path(records_dir)
    source = run_dir / RECORD_FILENAME if run_dir.is_dir() else run_dir
    if not source.is_file():
        raise LeaderboardError(f"{source} not found: pass a run folder holding {RECORD_FILENAME}, or the file")
    record = load_record(source)
    if record["status"] not in FINISHED_STATUSES:
        raise LeaderboardError(f"{source}: status {record['status']!r} is not a finished run; wait for the run "
                               "to end")

    destination = record_destination(record, records_dir)
    text = record_to_json(record)
    if (_same_text(destination, text) or _same_text(destination, record_to_json(_verified(record)))
            or _filed_with_test(destination, record)):
        return destination  # already filed: nothing to write, nothing to check again

    problems = record_problems(record, {**KNOWN_FLOORS, **(floors or {})})
    if "test" in record:
        problems.append("test: only `slowrun leaderboard add --verify --test-data` writes this section, after scoring "
                        "the run on the maintainers' test split; remove it from the record")
    if verify is None:
        problems += unasked_verification_problems(record)
    if method_dir is not None:
        problems += method_hash_problems(record, method_dir)
    if problems:
        raise LeaderboardError(refusal_text(str(source), problems))

    board = _board(records_dir)
    _check_data_hash(source, record, board, known_tracks, new_track)
    _check_run_is_new(source, record, board, destination, records_dir)
    if destination.exists():
        raise LeaderboardError(f"{destination} already exists with different content; a record on the board is "
                               "never overwritten: remove it first if it must be replaced")
    if verify is not None:
        found = list(verify(source.parent, record))
        if found:
            raise LeaderboardError(f"{source}: verification of the run folder {source.parent} failed:\n  "
                                   + "\n  ".join(found))
        text = record_to_json(_verified(record))
        section = test_score(source.parent, record) if test_score is not None else None
        if section is not None:
            text = record_to_json(_with_test(record, section))
    if not dry_run:
        write_text_atomic(destination, text)
    return destination


def _verified(record: dict) -> dict:
    """The record as filed after a maintainer's re-evaluation agreed with it: what was done, and only that."""
    return {**record, "verified": {"ok": True, "kind": "re-evaluated", "by": "slowrun leaderboard add --verify",
                                   "what": "every snapshot re-evaluated in the sandbox and compared with the record; "
                                           "training was not re-run"}}


def _with_test(record: dict, section: dict) -> dict:
    """The verified record with its test score, at the schema version that has the `test` section."""
    return {**upgrade_record(_verified(record)), "test": section}


def _filed_with_test(destination: Path, record: dict) -> bool:
    """Whether `destination` holds this very record, verified and filed with a test score."""
    if not destination.is_file():
        return False
    try:
        filed = load_record(destination)
    except SlowrunError:
        return False
    return (isinstance(filed.get("test"), dict)
            and _same_text(destination, record_to_json(_with_test(record, filed["test"]))))


def add_submission(path: str | Path, records_dir: str | Path = DEFAULT_RECORDS_DIR, *,
                   method_dir: str | Path | None = None, dry_run: bool = False, fetch_to: str | Path | None = None,
                   fetch_progress: bool = False, fetch_local: tuple[str | Path, ...] = (), **options) -> list[Path]:
    """File a run folder, a record file, or every run of a submission bundle; return where each goes.

    For a bundle, all its runs are checked before any is written, so a bundle is filed whole or not at all.
    With `verify`, the snapshots a bundle names by URL are fetched into `fetch_to` (default: the user's
    cache, leaderboard/storage.py) and checked against their sha256 first; `file://` URLs only from inside
    the folders in `fetch_local`.
    """
    if not is_bundle(path):
        return [add_record(path, records_dir, method_dir=method_dir, dry_run=dry_run, **options)]
    bundle = read_bundle(path)
    method = method_dir if method_dir is not None else bundle.method_dir
    if options.get("verify") is not None:
        options = {**options, "verify": with_fetched_weights(options["verify"], fetch_to or default_cache_dir(),
                                                             progress=fetch_progress, local_roots=tuple(fetch_local))}
    if options.get("test_score") is not None:  # scored once, in the checking pass; filed in the second
        options = {**options, "test_score": _once(options["test_score"])}
    for run in bundle.runs:  # every check, the verification included, before anything is written
        add_record(run.folder, records_dir, method_dir=method, dry_run=True, **options)
    if dry_run:
        return [record_destination(run.record, Path(records_dir)) for run in bundle.runs]
    if options.get("verify") is not None:
        options = {**options, "verify": _already_verified}
    return [add_record(run.folder, records_dir, method_dir=method, **options) for run in bundle.runs]


def _already_verified(run_dir: Path, record: dict) -> list[str]:
    return []  # the bundle's runs were re-evaluated in the checking pass


def _once(test_score: TestScorer) -> TestScorer:
    """`test_score` that scores each run once and gives the same section when asked again."""
    found: dict[str, dict | None] = {}

    def scored(run_dir: Path, record: dict) -> dict | None:
        key = record_to_json(record)
        if key not in found:
            found[key] = test_score(run_dir, record)
        return found[key]

    return scored


def _same_text(path: Path, text: str) -> bool:
    try:
        return path.is_file() and path.read_text(encoding="utf-8") == text
    except (OSError, UnicodeDecodeError):
        return False


def _check_data_hash(source: Path, record: dict, board: list[LoadedRecord],
                     known_tracks: Mapping[str, Iterable[str]] | None, new_track: bool) -> None:
    track, data_hash = record["track"]["name"], record["track"]["data_hash"]
    official = official_hashes(track)
    if official is not None:
        if data_hash not in official:
            shown = ", ".join(sorted(hash_prefix(h) for h in official))
            raise LeaderboardError(
                f"{source}: track {track!r} ran on data {hash_prefix(data_hash)}, which is not the track's official "
                f"data ({shown}, listed in harness/rules/official_hashes.py); re-run on the data `slowrun prepare "
                f"--track {track}` gives (check `slowrun data info`)")
        return
    given = {name: set(hashes) for name, hashes in (known_tracks or {}).items()}
    expected = given.get(track) or _track_hashes(board).get(track, set())
    if expected and data_hash not in expected:
        shown = ", ".join(sorted(hash_prefix(h) for h in expected))
        raise LeaderboardError(
            f"{source}: track {track!r} ran on data {hash_prefix(data_hash)}, but the board knows this track as "
            f"data {shown}; re-run on the track's official prepared data (check `slowrun data info`)")
    if not expected and not new_track:
        raise LeaderboardError(f"{source}: track {track!r} is new to this board; pass --new-track to open a "
                               "table for it, or --known-tracks NAME=HASH to state the expected data")


def _check_run_is_new(source: Path, record: dict, board: list[LoadedRecord], destination: Path,
                      records_dir: Path) -> None:
    """A run is listed once: the same run id in another file is refused (the same file with other content is
    refused by the caller, which never overwrites)."""
    here = destination.relative_to(records_dir).as_posix()
    for loaded in board:
        if loaded.record["run_id"] == record["run_id"] and loaded.relpath != here:
            raise LeaderboardError(
                f"{source}: run {record['run_id']!r} is already on the board as {loaded.relpath}; each run is "
                f"listed once, so remove {records_dir / loaded.relpath} first if this record must replace it")
