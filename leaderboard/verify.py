"""What a record must satisfy, beyond the schema, before the board files it.

The schema (harness/formats/records.py) says a record has the right shape; these checks say its numbers could
have come from a real run: losses no model can reach, more data than the budget allows, scores outside
[0, 1], a date in the future or ensemble weights that do not add up mean the record was edited or the
run is broken, and either way it must not be ranked. Names carrying Unicode bidirectional controls are
refused too, because they make a page show text in another order than the file holds (a method name
that reads like someone else's). Each check returns `field.path: what is wrong; what to do` lines, all
of them at once, so one round of fixes suffices.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Mapping

from harness.errors import LeaderboardError
from harness.formats.method_toml import method_hash
from harness.rules.official_hashes import KNOWN_FLOORS
from harness.formats.records import parse_created

CLOCK_SKEW = timedelta(minutes=5)
EPOCH_SLACK = 1e-9  # relative: the meter's own float arithmetic, nothing more
WEIGHT_SUM_TOLERANCE = 1e-6

# Embeddings, overrides and isolates (U+202A..U+202E, U+2066..U+2069), the directional marks (U+200E,
# U+200F) and the Arabic letter mark (U+061C): every character that reorders how text around it shows.
BIDI_CONTROLS = frozenset(chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def bidi_problems(record: Any, where: str = "") -> list[str]:
    """Every string of the record (object keys included) that holds a bidirectional control character.

    The whole record is first serialised once by the C encoder and searched: almost every record has no
    such character, and walking every string in Python cost most of a 1,000-record build's checks.
    """
    if not where and BIDI_CONTROLS.isdisjoint(json.dumps(record, ensure_ascii=False, default=str)):
        return []
    problems: list[str] = []
    if isinstance(record, dict):
        for key in sorted(record, key=str):
            path = f"{where}.{key}" if where else str(key)
            if isinstance(key, str) and BIDI_CONTROLS.intersection(key):
                problems.append(_bidi_message(f"{where or 'record'}: the key {key!r}", key))
            problems.extend(bidi_problems(record[key], path))
    elif isinstance(record, list):
        for index, item in enumerate(record):
            problems.extend(bidi_problems(item, f"{where}[{index}]"))
    elif isinstance(record, str) and BIDI_CONTROLS.intersection(record):
        problems.append(_bidi_message(where, record))
    return problems


def _bidi_message(where: str, text: str) -> str:
    found = ", ".join(f"U+{ord(c):04X}" for c in sorted(BIDI_CONTROLS.intersection(text)))
    return (f"{where}: holds the bidirectional control character(s) {found}, which make the text display in "
            "another order than it is stored; remove them")


def verify_record_bounds(record: dict, floors: Mapping[str, float] = KNOWN_FLOORS, *,
                         now: datetime | None = None) -> list[str]:
    """Every bound a schema-valid record breaks; an empty list means it is plausible.

    `floors` maps a track name to the lowest validation loss its official data allows (default: the
    built-in table); `now` is the time a `created` stamp may not be later than (default: this clock).
    """
    problems: list[str] = []
    problems.extend(_loss_problems(record, floors))
    problems.extend(_budget_problems(record))
    problems.extend(_downstream_problems(record))
    problems.extend(_ensemble_problems(record))
    now = now or datetime.now(timezone.utc)
    created = parse_created(record["created"])
    if created > now + CLOCK_SKEW:
        problems.append(f"created: {record['created']} is in the future (this machine's clock says "
                        f"{now.astimezone(timezone.utc):%Y-%m-%dT%H:%M:%SZ}, {CLOCK_SKEW.seconds // 60} minutes of "
                        "skew allowed); a record is stamped when its run ends, so fix the stamp or the clock")
    return problems


def _losses(record: dict) -> list[tuple[str, Any, bool]]:
    """(field path, value, whether the track's floor applies) for every loss a record states."""
    found: list[tuple[str, Any, bool]] = []
    result = record.get("result")
    if isinstance(result, dict):
        found += [("result.val_loss", result.get("val_loss"), True), ("result.val_bpb", result.get("val_bpb"), False)]
    for name, items in (("snapshots", record.get("snapshots")), ("k_sweep", record.get("k_sweep")),
                        ("curve", record.get("curve"))):
        for index, item in enumerate(items or []):
            found.append((f"{name}[{index}].val_loss", item.get("val_loss"), True))
            if "val_bpb" in item:
                found.append((f"{name}[{index}].val_bpb", item.get("val_bpb"), False))
    return found


def _loss_problems(record: dict, floors: Mapping[str, float]) -> list[str]:
    track = record["track"]["name"]
    floor = floors.get(track)
    problems = []
    for where, value, floored in _losses(record):
        if value is None:
            continue
        if not _number(value) or not math.isfinite(value):
            problems.append(f"{where}: must be a finite number, got {value!r}")
        elif value < 0:
            problems.append(f"{where}: a loss cannot be negative, got {value!r}")
        elif floored and floor is not None and value < floor:
            problems.append(f"{where}: {value!r} is below {floor!r}, the lowest loss any model can reach on track "
                            f"{track!r}; the evaluation is broken or the number was edited, so re-run and "
                            "submit the record the harness wrote")
    return problems


def _budget_problems(record: dict) -> list[str]:
    """The meter stops a method at its budget, so a record past it was not metered by this harness."""
    budget, metered = float(record["budget_epochs"]), record["metered"]
    problems = []
    if metered["epochs"] > budget * (1 + EPOCH_SLACK):
        problems.append(f"metered.epochs: {metered['epochs']!r} is more than the budget of {budget!r} epochs; "
                        "the meter refuses data past the budget, so this record was not metered as written")
    train_tokens = record["track"]["train_tokens"]
    stated = metered.get("epoch_tokens")  # the training split after the fitness carve, in newer records
    epoch_tokens = train_tokens  # without it, the whole split: an upper bound on the epoch
    if stated is not None:
        if isinstance(stated, int) and not isinstance(stated, bool) and 0 < stated <= train_tokens:
            epoch_tokens = stated
        else:
            problems.append(f"metered.epoch_tokens: must be a whole number of tokens between 1 and the track's "
                            f"training split ({train_tokens:,}), got {stated!r}")
    allowed = budget * epoch_tokens * (1 + EPOCH_SLACK) + 1e-6
    if metered["train_tokens"] > allowed:
        problems.append(f"metered.train_tokens: {metered['train_tokens']:,} is more than {budget!r} epochs of "
                        f"{epoch_tokens:,} tokens allow ({math.floor(allowed):,})")
    streams = sum(metered["per_stream"].values())
    if streams != metered["train_tokens"]:
        problems.append(f"metered.per_stream: the streams served {streams:,} tokens in all, but "
                        f"metered.train_tokens says {metered['train_tokens']:,}; they are the same count")
    if epoch_tokens == stated:
        measured = metered["train_tokens"] / epoch_tokens
        if not math.isclose(metered["epochs"], measured, rel_tol=EPOCH_SLACK, abs_tol=1e-12):
            problems.append(f"metered.epochs: {metered['epochs']!r}, but {metered['train_tokens']:,} tokens over "
                            f"an epoch of {epoch_tokens:,} are {measured!r} epochs")
    return problems


def _downstream_problems(record: dict) -> list[str]:
    """Accuracies are fractions of documents: anything outside [0, 1] was not measured."""
    problems = []
    values: list[tuple[str, Any]] = []
    for task, score in sorted((record.get("downstream") or {}).items()):
        values += [(f"downstream[{task!r}].{metric}", score.get(metric)) for metric in ("acc", "acc_norm")]
        for metric in ("acc_stderr", "acc_norm_stderr"):
            value = score.get(metric)
            if _number(value) and value < 0:
                problems.append(f"downstream[{task!r}].{metric}: a standard error cannot be negative, got {value!r}")
    average = record.get("downstream_average")
    if isinstance(average, dict):
        values += [(f"downstream_average.{metric}", value) for metric, value in sorted(average.items())]
    efficiency = record.get("downstream_efficiency")
    if isinstance(efficiency, dict):
        values += [(f"downstream_efficiency[{metric!r}].score", entry.get("score"))
                   for metric, entry in sorted(efficiency.items()) if isinstance(entry, dict)]
    for where, value in values:
        if value is None:
            continue
        if not _number(value) or not (math.isfinite(value) and 0.0 <= value <= 1.0):
            problems.append(f"{where}: a score must be a number between 0 and 1, got {value!r}")
    return problems


def _ensemble_problems(record: dict) -> list[str]:
    """Every ensemble is a mixture of existing snapshots: known tags, finite weights >= 0 summing to 1."""
    tags = {snapshot["tag"] for snapshot in record["snapshots"]}
    ensembles = [("ensemble.members", record["ensemble"]["members"])]
    ensembles += [(f"k_sweep[{i}].members", entry["members"]) for i, entry in enumerate(record.get("k_sweep") or [])]
    problems = []
    for where, members in ensembles:
        for index, member in enumerate(members):
            if member["tag"] not in tags:
                problems.append(f"{where}[{index}].tag: {member['tag']!r} names no snapshot of this record")
            weight = member["weight"]
            if not _number(weight) or not math.isfinite(weight) or weight < 0:
                problems.append(f"{where}[{index}].weight: must be a finite number >= 0, got {weight!r}")
        weights = [m["weight"] for m in members if _number(m["weight"]) and math.isfinite(m["weight"])]
        if members and len(weights) == len(members) and abs(math.fsum(weights) - 1.0) > WEIGHT_SUM_TOLERANCE:
            problems.append(f"{where}: the weights sum to {math.fsum(weights)!r}, not 1; an ensemble averages its "
                            "members' probabilities, so the weights must add up to 1")
    return problems


def claim_problems(record: dict) -> list[str]:
    """Fields only the board itself makes: a run's record that declares them is claiming to be something else.

    `provenance.kind = "reported"` (and the `reported` row) is what the board gives Slowrun's published
    results, read from leaderboard/published/; a records-folder file carrying it would sit in a table of
    published results, under their badge.
    """
    problems = []
    declared = record.get("provenance")
    if isinstance(declared, dict) and declared.get("kind") == "reported":
        problems.append("provenance.kind: 'reported' is for Slowrun's published results, which the board reads "
                        "from leaderboard/published/; a run's record is measured, so remove the field")
    if "reported" in record:
        problems.append("reported: the published row of a reported result; a run's record has none, so remove it")
    return problems


def unasked_verification_problems(record: dict) -> list[str]:
    """`verified` is written by `leaderboard add --verify` after its re-evaluation agreed; a record that arrives
    carrying one claims a check nobody made here (the board would badge it re-evaluated)."""
    if "verified" not in record:
        return []
    return ["verified: only `slowrun leaderboard add --verify` writes this field, after re-evaluating the run; "
            "remove it from the record, or add the run with --verify"]


_BIDI_OR_ESCAPE = re.compile("[" + "".join(sorted(BIDI_CONTROLS)) + "]|\\\\u")


def text_may_hold_bidi(text: str) -> bool:
    """Whether a record file's text can hold a bidirectional control: written as is, or as a JSON `\\u` escape."""
    return _BIDI_OR_ESCAPE.search(text) is not None


def record_problems(record: dict, floors: Mapping[str, float] = KNOWN_FLOORS, *,
                    now: datetime | None = None, text: str | None = None) -> list[str]:
    """Every content rule a schema-valid record must keep to be on the board, for `add` and `build` alike:
    no bidirectional controls, numbers within bounds, no field only the board may write.

    `text`, the file the record was read from, lets the bidirectional check be skipped when the text
    cannot hold such a character (a scan of the text, about a tenth of the cost of the check).
    """
    bidi = bidi_problems(record) if text is None or text_may_hold_bidi(text) else []
    return bidi + verify_record_bounds(record, floors, now=now) + claim_problems(record)


def refusal_text(where: str, problems: list[str]) -> str:
    """The one message form for a refused record: where, how many problems, one per line."""
    return f"{where}: refused, {len(problems)} problem(s):\n  " + "\n  ".join(problems)


def method_hash_problems(record: dict, method_dir: str | Path) -> list[str]:
    """The record's `method.hash` against the hash of the method folder it claims to have run."""
    folder = Path(method_dir)
    if not folder.is_dir():
        raise LeaderboardError(f"--method-dir {folder}: not a folder; pass the method folder the run used "
                               "(the one holding method.toml)")
    actual, stated = method_hash(folder), record["method"]["hash"]
    if actual == stated:
        return []
    return [f"method.hash: the record says {stated}, but {folder} hashes to {actual}; pass the method folder "
            "exactly as it was run (caches and hidden files do not count), or re-run with this one"]
