"""The result record: one JSON document per run, schema version 1.

Every run the harness starts ends in a record, failed runs included, so a crash is as visible as a
win. The leaderboard is built from these files alone, which is why the schema is checked strictly on
the way in (required keys and types) and loosely on extras (unknown keys are kept, so a newer harness
can add fields without breaking an older board). The full field list is in docs/records.md.

Records are written deterministically (sorted keys, two-space indent, NaN and infinities as null) and
atomically (temporary file in the same folder, fsync, rename), so the same run gives the same bytes
and a crash mid-write never leaves half a record where a good one was.
"""

from __future__ import annotations

import json
import math
import os
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Mapping

from harness.common.atomic import write_text_atomic
from harness.errors import RecordError

# Version 2 adds each snapshot's `evaluated_by` (`graph`: from its exported forward, in a harness process;
# `method code`: by its own code in the sandboxed worker). Version 1 records (from before graphs, all
# evaluated by method code) are still read, and shown as such.
# Version 3 adds the optional `test` section: the final predictor's loss on the maintainers' held-out test
# split, filed by `slowrun leaderboard add --verify --test-data DIR` (harness/run/reverify.py). Nothing else
# changed, so a version 2 record is a version 3 record without it; only a version 3 record may carry one,
# and `upgrade_record` brings an older record to this version when the board files a test score on it.
SCHEMA_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
EVALUATED_BY = ("graph", "method code")
STATUSES = ("ok", "failed", "budget-exceeded", "over-time", "diverged", "invalid", "timeout")
# The largest budget a run may ask for. Far beyond any real run (the unlimited track's records train tens of
# epochs), and small enough that budget x epoch tokens stays an exact integer count of tokens: a budget of
# 1e308 epochs would overflow to infinity there and crash the data server after the run folder was made.
MAX_BUDGET_EPOCHS = 1e6
# A method's name is shown on the board, in tables, plots and file names: one line, without control
# characters, of at most this many characters.
MAX_NAME_CHARS = 100
# `slowrun run` and `slowrun eval` exit with the run's status, so a script or a scheduler can tell a run
# that ended in a record of a failure from one that succeeded (2 is bad input: no run was made; 130 an
# interruption, which still wrote a record).
EXIT_CODES = {"ok": 0, "budget-exceeded": 3, "over-time": 4, "invalid": 5, "diverged": 6, "failed": 7, "timeout": 8}


def exit_code(status: str) -> int:
    """The exit code of a command whose run ended with `status` (docs/records.md lists them)."""
    return EXIT_CODES.get(status, EXIT_CODES["failed"])
ENSEMBLE_SOURCES = ("method", "prior", "last")
RECORD_FILENAME = "record.json"

_METHOD_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")


# --- a small declarative schema -------------------------------------------------------------------

class _Spec:
    """One node of the schema: appends `where: problem` strings for a value that does not fit."""

    def check(self, value: Any, where: str, problems: list[str]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


def _got(value: Any) -> str:
    shown = repr(value)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return f"got {type(value).__name__} {shown}"


@dataclass(frozen=True)
class _Str(_Spec):
    non_empty: bool = False
    line: int | None = None  # one line of at most this many characters (names people read)

    def check(self, value, where, problems):
        if not isinstance(value, str):
            problems.append(f"{where}: expected a string, {_got(value)}")
        elif self.non_empty and not value.strip():
            problems.append(f"{where}: must not be empty")
        elif self.line is not None and not is_name_line(value, self.line):
            problems.append(f"{where}: expected one line of at most {self.line} characters without control "
                            f"characters, {_got(value)}")


def is_name_line(text: str, limit: int = MAX_NAME_CHARS) -> bool:
    """One line of at most `limit` characters: no control character (NUL, newline, tab, escape, ...) and no
    line or paragraph separator. Bidirectional controls are refused by the board with their code point
    (leaderboard/verify.py), which says more than this would."""
    return len(text) <= limit and not any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in text)


@dataclass(frozen=True)
class _Int(_Spec):
    minimum: int | None = None

    def check(self, value, where, problems):
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{where}: expected an integer, {_got(value)}")
        elif self.minimum is not None and value < self.minimum:
            problems.append(f"{where}: must be at least {self.minimum}, got {value}")


@dataclass(frozen=True)
class _Float(_Spec):
    minimum: float | None = None
    maximum: float | None = None

    def check(self, value, where, problems):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{where}: expected a number, {_got(value)}")
        elif not math.isfinite(value):
            problems.append(f"{where}: must be a finite number, got {value!r}")
        elif self.minimum is not None and value < self.minimum:
            problems.append(f"{where}: must be at least {self.minimum}, got {value}")
        elif self.maximum is not None and value > self.maximum:
            problems.append(f"{where}: must be at most {self.maximum:g}, got {value:g}")


@dataclass(frozen=True)
class _AnyObject(_Spec):
    def check(self, value, where, problems):
        if not isinstance(value, dict):
            problems.append(f"{where}: expected an object, {_got(value)}")


@dataclass(frozen=True)
class _Nullable(_Spec):
    inner: _Spec

    def check(self, value, where, problems):
        if value is not None:
            self.inner.check(value, where, problems)


@dataclass(frozen=True)
class _OneOf(_Spec):
    choices: tuple[str, ...]

    def check(self, value, where, problems):
        if value not in self.choices:
            problems.append(f"{where}: must be one of {', '.join(map(repr, self.choices))}, {_got(value)}")


@dataclass(frozen=True)
class _Matches(_Spec):
    pattern: re.Pattern
    hint: str

    def check(self, value, where, problems):
        if not isinstance(value, str) or not self.pattern.match(value):
            problems.append(f"{where}: expected {self.hint}, {_got(value)}")


@dataclass(frozen=True)
class _ListOf(_Spec):
    item: _Spec

    def check(self, value, where, problems):
        if not isinstance(value, list):
            problems.append(f"{where}: expected a list, {_got(value)}")
            return
        for index, element in enumerate(value):
            self.item.check(element, f"{where}[{index}]", problems)


@dataclass(frozen=True)
class _MapOf(_Spec):
    value: _Spec

    def check(self, value, where, problems):
        if not isinstance(value, dict):
            problems.append(f"{where}: expected an object, {_got(value)}")
            return
        for key in sorted(value, key=str):
            self.value.check(value[key], f"{where}[{key!r}]", problems)


@dataclass(frozen=True)
class _Fields(_Spec):
    """An object with required keys; keys beyond these are allowed and ignored."""

    fields: tuple[tuple[str, _Spec], ...]

    def check(self, value, where, problems):
        if not isinstance(value, dict):
            problems.append(f"{where or 'record'}: expected an object, {_got(value)}")
            return
        for key, spec in self.fields:
            path = f"{where}.{key}" if where else key
            if key not in value:
                problems.append(f"{path}: missing")
            else:
                spec.check(value[key], path, problems)


def _fields(**specs: _Spec) -> _Fields:
    return _Fields(tuple(specs.items()))


_MEMBER = _fields(tag=_Str(non_empty=True), weight=_Float(minimum=0.0))
_SCORE = _fields(acc=_Float(), acc_stderr=_Float(), acc_norm=_Float(), acc_norm_stderr=_Float(), n=_Int(minimum=0))

RECORD_SCHEMA = _fields(
    schema_version=_Int(),
    run_id=_Str(non_empty=True),
    created=_Str(non_empty=True),
    status=_OneOf(STATUSES),
    error=_Nullable(_fields(type=_Str(), message=_Str(), traceback=_Str())),
    method=_fields(
        name=_Str(non_empty=True, line=MAX_NAME_CHARS), description=_Str(), authors=_ListOf(_Str()),
        hash=_Matches(_METHOD_HASH, "'sha256:' and 64 lowercase hex digits"), entry=_Str(),
    ),
    track=_fields(
        name=_Str(non_empty=True), data_hash=_Str(non_empty=True), train_tokens=_Int(minimum=0),
        val_tokens=_Int(minimum=0), seq_len=_Int(minimum=1), vocab_size=_Int(minimum=1), tokenizer=_Str(),
    ),
    budget_epochs=_Float(minimum=0.0, maximum=MAX_BUDGET_EPOCHS),
    seed=_Int(),
    hparams=_AnyObject(),
    metered=_fields(
        epochs=_Float(minimum=0.0), train_tokens=_Int(minimum=0), per_stream=_MapOf(_Int(minimum=0)),
        fitness_tokens=_Int(minimum=0),
    ),
    snapshots=_ListOf(_fields(
        tag=_Str(non_empty=True), epochs=_Float(minimum=0.0), val_loss=_Nullable(_Float()),
        val_bpb=_Nullable(_Float()), meta=_AnyObject(),
    )),
    ensemble=_fields(members=_ListOf(_MEMBER), source=_OneOf(ENSEMBLE_SOURCES)),
    result=_Nullable(_fields(
        val_loss=_Float(), val_bpb=_Nullable(_Float()), ensemble_size=_Int(minimum=0),
        data_efficiency=_fields(multiplier=_Nullable(_Float()), bound=_Nullable(_Str()), flag=_Nullable(_Str())),
    )),
    k_sweep=_ListOf(_fields(k=_Int(minimum=1), val_loss=_Float(), val_bpb=_Nullable(_Float()), members=_ListOf(_MEMBER))),
    curve=_ListOf(_fields(epochs=_Float(minimum=0.0), val_loss=_Float())),
    downstream=_Nullable(_MapOf(_SCORE)),
    timings=_fields(train_s=_Float(minimum=0.0), eval_s=_Float(minimum=0.0), other_s=_Float(minimum=0.0)),
    compute=_fields(**{"class": _Str(non_empty=True), "device": _Str(), "world_size": _Int(minimum=1)}),
    environment=_fields(
        python=_Str(), torch=_Str(), platform=_Str(), cpu=_Str(), gpu=_Nullable(_Str()),
        harness_version=_Str(), git_commit=_Nullable(_Str()),
    ),
)

RECORD_FIELDS = tuple(name for name, _ in RECORD_SCHEMA.fields)

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
# Sections a record may lack; when present they must have this shape. `test` (schema 3): the record's final
# predictor (its `ensemble`, same members and weights) scored on a held-out test split by the same evaluation
# code as validation. `loss` in nats/token over every target of the split's full windows, `bpb` beside it
# when the validation result has bits/byte; `loss_se` and `val_loss_se` are the standard errors of the test
# and validation losses (from the splits' window means: leaderboard/holdout.py says why and how the board
# uses them); `tokens` the targets scored in `windows` windows; `split_hash` names the test split (its
# manifest, harness/data/holdout.py); `by` says what filed it. `selection` (optional: records filed before
# it have none) says how the split's documents were chosen: `keyed` by the maintainers' secret, or
# `contiguous`, the next tokens of the public stream that anyone can rebuild.
TEST_SECTION = _fields(
    loss=_Float(minimum=0.0), bpb=_Nullable(_Float(minimum=0.0)), loss_se=_Float(minimum=0.0),
    val_loss_se=_Float(minimum=0.0), tokens=_Int(minimum=1), windows=_Int(minimum=1),
    split_hash=_Matches(_SHA256_HEX, "64 lowercase hex digits"), by=_Str(non_empty=True),
)
TEST_SELECTIONS = ("keyed", "contiguous")
OPTIONAL_SECTIONS = (("test", TEST_SECTION, 3),)  # (key, shape, the first schema version that has it)


# --- validation -----------------------------------------------------------------------------------

def parse_created(text: str) -> datetime:
    """The record's `created` stamp as an aware UTC datetime; ValueError if it is not ISO-8601 UTC."""
    stamp = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)  # 3.10 lacks "Z"
    if stamp.tzinfo is None or stamp.utcoffset() != timedelta(0):
        raise ValueError("not in UTC")
    return stamp.astimezone(timezone.utc)


def utc_timestamp(moment: datetime | None = None) -> str:
    """An ISO-8601 UTC stamp with a `Z`, to the second, for a record's `created` field."""
    moment = moment or datetime.now(timezone.utc)
    if moment.tzinfo is None:
        raise ValueError("pass an aware datetime (with tzinfo) so the stamp is unambiguous")
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def validate_record(obj: Any) -> list[str]:
    """Every problem with a record, as `field.path: what is wrong` lines; an empty list means valid."""
    problems: list[str] = []
    if not isinstance(obj, dict):
        return [f"record: expected a JSON object, {_got(obj)}"]
    version = obj.get("schema_version")
    if isinstance(version, int) and not isinstance(version, bool) and version not in READABLE_VERSIONS:
        newer = version > SCHEMA_VERSION
        return [f"schema_version: this harness reads versions {', '.join(map(str, READABLE_VERSIONS))}, the "
                f"record has {version}" + ("; upgrade slowrun to read it" if newer else
                                           "; re-create the record with this harness")]
    RECORD_SCHEMA.check(obj, "", problems)
    for key, spec, since in OPTIONAL_SECTIONS:
        if key in obj:
            spec.check(obj[key], key, problems)
            if isinstance(version, int) and not isinstance(version, bool) and version < since:
                problems.append(f"{key}: a schema-{since} section in a schema-{version} record; a record gains it "
                                f"only when it is filed with it (which sets schema_version to {since} or later)")
    problems.extend(_consistency_problems(obj))
    return problems


def upgrade_record(record: Mapping[str, Any]) -> dict:
    """A copy of `record` at SCHEMA_VERSION, with what each later version added filled in as an older record
    is already read: a version 1 snapshot row gets `evaluated_by: "method code"` (`evaluated_by`). Nothing
    else changes; a current record comes back as an equal copy."""
    upgraded = json.loads(json.dumps(normalize_for_json(record)))
    if upgraded.get("schema_version") == 1:
        for row in upgraded.get("snapshots") or []:
            if isinstance(row, dict):
                row.setdefault("evaluated_by", evaluated_by(row))
    upgraded["schema_version"] = max(SCHEMA_VERSION, upgraded.get("schema_version", SCHEMA_VERSION))
    return upgraded


def evaluated_by(row: dict) -> str:
    """How a snapshot row was scored (version 1 rows, from before graphs: by the method's code)."""
    return row.get("evaluated_by", "method code") if isinstance(row, dict) else "method code"


def _consistency_problems(obj: dict) -> list[str]:
    """Rules that tie fields together; each only runs when the fields it reads have the right shape."""
    problems: list[str] = []
    if obj.get("schema_version") in (2, 3) and isinstance(obj.get("snapshots"), list):
        for i, row in enumerate(obj["snapshots"]):
            if isinstance(row, dict) and row.get("evaluated_by") not in EVALUATED_BY:
                problems.append(f"snapshots.{i}.evaluated_by: expected one of {', '.join(EVALUATED_BY)} "
                                f"(schema 2 and later), got {row.get('evaluated_by')!r}")
    if "test" in obj and obj.get("result") is None:
        problems.append("test: a test score is of the record's result; a record without a result has none")
    if isinstance(obj.get("test"), dict) and obj["test"].get("selection", "contiguous") not in TEST_SELECTIONS:
        problems.append(f"test.selection: expected one of {', '.join(TEST_SELECTIONS)}, got "
                        f"{str(obj['test'].get('selection'))[:40]!r}")
    created = obj.get("created")
    if isinstance(created, str) and created.strip():
        try:
            parse_created(created)
        except ValueError:
            problems.append(f"created: expected an ISO-8601 UTC time such as 2025-01-31T12:00:00Z, got {created!r}")

    status, result, error = obj.get("status"), obj.get("result"), obj.get("error")
    if status == "ok":
        if result is None and "result" in obj:
            problems.append("result: a record with status 'ok' needs a result (or use another status)")
        if error is not None:
            problems.append("error: a record with status 'ok' must have error null")
    elif status == "failed" and error is None and "error" in obj:
        problems.append("error: a record with status 'failed' must say what failed (type, message, traceback)")

    snapshots = obj.get("snapshots")
    if isinstance(snapshots, list) and all(isinstance(s, dict) and isinstance(s.get("tag"), str) for s in snapshots):
        tags = [s["tag"] for s in snapshots]
        duplicates = sorted(tag for tag, count in Counter(tags).items() if count > 1)
        if duplicates:
            problems.append(f"snapshots: tags must be unique, repeated: {', '.join(map(repr, duplicates))}")
        ensemble = obj.get("ensemble")
        members = ensemble.get("members") if isinstance(ensemble, dict) else None
        if isinstance(members, list):
            for index, member in enumerate(members):
                if isinstance(member, dict) and isinstance(member.get("tag"), str) and member["tag"] not in tags:
                    problems.append(f"ensemble.members[{index}].tag: {member['tag']!r} names no snapshot")
    return problems


# --- JSON form ------------------------------------------------------------------------------------

def normalize_for_json(value: Any) -> Any:
    """A plain-JSON copy: NaN and infinities become null, tuples lists, numpy scalars Python numbers."""
    if isinstance(value, dict):
        return {str(k): normalize_for_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [normalize_for_json(v) for v in value]
    if isinstance(value, (str, bool)) or value is None:
        return value
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, int):
        return int(value)
    item = getattr(value, "item", None)  # numpy / torch scalars
    if callable(item):
        return normalize_for_json(item())
    raise RecordError(f"a record holds a {type(value).__name__}, which has no JSON form; "
                      "store numbers, strings, lists or objects")


def record_to_json(record: Mapping[str, Any]) -> str:
    """The canonical text of a record: the same record always gives the same characters."""
    return json.dumps(normalize_for_json(record), sort_keys=True, indent=2, allow_nan=False,
                      ensure_ascii=False) + "\n"


def write_record_atomic(path: str | os.PathLike, record: Mapping[str, Any], *, validate: bool = True) -> Path:
    """Write `record` to `path` so readers see the old file or the whole new one, never a mix.

    With `validate` (the default) an invalid record raises RecordError and nothing is touched on disk.
    """
    path = Path(path)
    normalized = normalize_for_json(record)
    if validate:
        problems = validate_record(normalized)
        if problems:
            raise RecordError(f"refusing to write an invalid record to {path}:\n  " + "\n  ".join(problems))
    text = record_to_json(normalized)
    write_text_atomic(path, text)
    return path


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON; a record writes null for a value that is not a finite number")


def load_record(path: str | os.PathLike) -> dict:
    """Read and validate one record file; RecordError names the file and lists every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecordError(f"{path}: no such record file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecordError(f"{path}: cannot read the record ({exc})") from None
    return parse_record(text, source=str(path))


def parse_record(text: str, *, source: str = "record") -> dict:
    """Parse and validate record text; `source` names it in the error (a path, or a path shown relative)."""
    try:
        obj = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise RecordError(f"{source}: not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except ValueError as exc:
        raise RecordError(f"{source}: {exc}") from None
    problems = validate_record(obj)
    if problems:
        raise RecordError(f"{source}: not a valid schema-{SCHEMA_VERSION} record:\n  " + "\n  ".join(problems))
    return obj
