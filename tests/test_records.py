"""The result record: schema checks, the canonical JSON form, atomic writes and clear read errors."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from harness.errors import RecordError, SlowrunError
from harness.formats.records import (SCHEMA_VERSION, load_record, normalize_for_json, record_to_json, utc_timestamp,
                             validate_record, write_record_atomic)
from tests.leaderboard.factory import failed_record, make_record

# The field list as the schema's specification states it, written out here independently of the module.
TOP_LEVEL_FIELDS = [
    "schema_version", "run_id", "created", "status", "error", "method", "track", "budget_epochs", "seed",
    "hparams", "metered", "snapshots", "ensemble", "result", "k_sweep", "curve", "downstream", "timings",
    "compute", "environment",
]


def test_schema_version_is_three_and_one_is_still_read():
    assert SCHEMA_VERSION == 3  # 3 adds the optional `test` section (tests/leaderboard/test_holdout.py)
    old = make_record(schema_version=1)
    for row in old["snapshots"]:
        del row["evaluated_by"]  # version 1 rows never said: they were scored by the method's code
    assert validate_record(old) == []


def test_version_two_rows_say_how_they_were_evaluated():
    record = make_record(schema_version=2)
    assert validate_record(record) == []
    del record["snapshots"][1]["evaluated_by"]
    assert [p.split(":")[0] for p in validate_record(record)] == ["snapshots.1.evaluated_by"]
    record["snapshots"][1]["evaluated_by"] = "method code"
    assert validate_record(record) == []
    record["snapshots"][0]["evaluated_by"] = "trust me"
    assert [p.split(":")[0] for p in validate_record(record)] == ["snapshots.0.evaluated_by"]


def test_factory_records_are_valid():
    assert validate_record(make_record(3)) == []
    assert validate_record(failed_record(4)) == []


@pytest.mark.parametrize("field", TOP_LEVEL_FIELDS)
def test_every_required_top_level_field_is_checked(field):
    record = make_record()
    del record[field]
    assert f"{field}: missing" in validate_record(record)


@pytest.mark.parametrize("path", [
    "method.hash", "track.data_hash", "track.vocab_size", "metered.per_stream", "timings.eval_s",
    "compute.class", "environment.git_commit", "result.data_efficiency", "result.data_efficiency.bound",
])
def test_nested_required_fields_are_checked(path):
    record = make_record()
    *parents, leaf = path.split(".")
    target = record
    for parent in parents:
        target = target[parent]
    del target[leaf]
    assert f"{path}: missing" in validate_record(record)


@pytest.mark.parametrize("overrides, expected", [
    ({"seed": "3"}, "seed: expected an integer"),
    ({"seed": True}, "seed: expected an integer"),
    ({"seed": 3.0}, "seed: expected an integer"),
    ({"budget_epochs": "8"}, "budget_epochs: expected a number"),
    ({"budget_epochs": -1.0}, "budget_epochs: must be at least 0"),
    ({"budget_epochs": 1e308}, "budget_epochs: must be at most 1e+06"),
    ({"method__name": "q0\x00"}, "method.name: expected one line"),
    ({"method__name": "q0\nhidden second line"}, "method.name: expected one line"),
    ({"method__name": "q0\u2028hidden second line"}, "method.name: expected one line"),  # a Unicode line separator
    ({"method__name": "q0\x1b[31m"}, "method.name: expected one line"),  # a terminal escape
    ({"method__name": "m" * 101}, "method.name: expected one line of at most 100"),
    ({"status": "done"}, "status: must be one of"),
    ({"run_id": ""}, "run_id: must not be empty"),
    ({"hparams": []}, "hparams: expected an object"),
    ({"method__authors": "me"}, "method.authors: expected a list"),
    ({"method__authors": ["me", 7]}, "method.authors[1]: expected a string"),
    ({"method__hash": "sha256:XYZ"}, "method.hash: expected 'sha256:' and 64 lowercase hex digits"),
    ({"metered__per_stream": {"a": 1.5}}, "metered.per_stream['a']: expected an integer"),
    ({"snapshots__0__val_loss": "low"}, "snapshots[0].val_loss: expected a number"),
    ({"snapshots__1__val_loss": math.nan}, "snapshots[1].val_loss: must be a finite number"),
    ({"result__val_loss": math.inf}, "result.val_loss: must be a finite number"),
    ({"ensemble__source": "guess"}, "ensemble.source: must be one of"),
    ({"ensemble__members": [{"tag": "s1", "weight": -0.5}]}, "ensemble.members[0].weight: must be at least 0"),
    ({"k_sweep__0__k": 0}, "k_sweep[0].k: must be at least 1"),
    ({"downstream": {"piqa": {"acc": 0.5}}}, "downstream['piqa'].acc_norm: missing"),
    ({"environment__gpu": 0}, "environment.gpu: expected a string"),
    ({"created": "yesterday"}, "created: expected an ISO-8601 UTC time"),
    ({"created": "2025-01-01T12:00:00"}, "created: expected an ISO-8601 UTC time"),
    ({"created": "2025-01-01T12:00:00+02:00"}, "created: expected an ISO-8601 UTC time"),
])
def test_wrong_types_and_values_are_reported(overrides, expected):
    problems = validate_record(make_record(**overrides))
    assert any(p.startswith(expected) for p in problems), problems


def test_utc_offsets_spelled_differently_are_accepted():
    assert validate_record(make_record(created="2025-01-01T12:00:00+00:00")) == []
    assert validate_record(make_record(created="2025-01-01T12:00:00.123456Z")) == []


def test_status_result_and_error_must_agree():
    assert any(p.startswith("result:") for p in validate_record(make_record(result=None)))
    ok_with_error = make_record(error={"type": "X", "message": "m", "traceback": ""})
    assert any(p.startswith("error:") for p in validate_record(ok_with_error))
    assert any(p.startswith("error:") for p in validate_record(failed_record(error=None)))
    # other unfinished-looking statuses may or may not carry a result
    assert validate_record(make_record(status="budget-exceeded")) == []
    assert validate_record(failed_record(status="diverged")) == []


def test_snapshot_tags_are_unique_and_ensemble_members_name_snapshots():
    record = make_record()
    record["snapshots"][1]["tag"] = "s0"
    record["ensemble"]["members"] = [{"tag": "nowhere", "weight": 1.0}]
    problems = validate_record(record)
    assert any("tags must be unique" in p and "'s0'" in p for p in problems)
    assert any(p.startswith("ensemble.members[0].tag: 'nowhere' names no snapshot") for p in problems)


def test_every_problem_is_reported_at_once():
    record = make_record(seed="x", status="nope")
    del record["track"]["seq_len"]
    problems = validate_record(record)
    assert {p.split(":")[0] for p in problems} >= {"seed", "status", "track.seq_len"}


def test_other_schema_versions_are_refused_with_direction():
    newer = validate_record(make_record(schema_version=4))
    assert len(newer) == 1 and "upgrade" in newer[0]
    assert validate_record(make_record(schema_version=0))[0].startswith("schema_version:")


def test_extra_keys_are_allowed_anywhere():
    record = make_record(notes="kept", method__license="MIT")
    record["snapshots"][0]["extra"] = [1, 2]
    assert validate_record(record) == []


@pytest.mark.parametrize("value", [None, [], "record", 3])
def test_a_non_object_is_one_problem(value):
    problems = validate_record(value)
    assert len(problems) == 1 and problems[0].startswith("record: expected a JSON object")


# --- canonical JSON and atomic writes -------------------------------------------------------------

def test_written_record_is_canonical_json(tmp_path):
    record = make_record(7)
    path = write_record_atomic(tmp_path / "record.json", record)
    text = path.read_text(encoding="utf-8")
    assert text == json.dumps(record, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    reordered = dict(reversed(list(record.items())))
    assert record_to_json(reordered) == text


def test_nan_and_infinity_are_written_as_null(tmp_path):
    record = make_record()
    record["snapshots"][0]["val_loss"] = math.nan
    record["snapshots"][1]["val_bpb"] = -math.inf
    path = write_record_atomic(tmp_path / "record.json", record)
    text = path.read_text(encoding="utf-8")
    assert "NaN" not in text and "Infinity" not in text
    loaded = load_record(path)
    assert loaded["snapshots"][0]["val_loss"] is None and loaded["snapshots"][1]["val_bpb"] is None


def test_numpy_scalars_become_plain_numbers(tmp_path):
    record = make_record(seed=np.int64(11), budget_epochs=np.float32(8.0))
    record["snapshots"][2]["val_loss"] = np.float64(np.nan)
    normalized = normalize_for_json(record)
    assert type(normalized["seed"]) is int and normalized["seed"] == 11
    assert type(normalized["budget_epochs"]) is float and normalized["budget_epochs"] == 8.0
    assert normalized["snapshots"][2]["val_loss"] is None
    assert load_record(write_record_atomic(tmp_path / "r.json", record))["seed"] == 11


def test_atomic_write_leaves_only_the_record(tmp_path):
    write_record_atomic(tmp_path / "record.json", make_record(1))
    write_record_atomic(tmp_path / "record.json", make_record(2))
    assert os.listdir(tmp_path) == ["record.json"]
    assert load_record(tmp_path / "record.json")["run_id"] == "run-00002"


def test_a_failing_write_keeps_the_old_record_whole(tmp_path, monkeypatch):
    path = write_record_atomic(tmp_path / "record.json", make_record(1))
    before = path.read_bytes()

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError):
        write_record_atomic(path, make_record(2))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["record.json"]


def test_a_failing_rename_keeps_the_old_record_whole(tmp_path, monkeypatch):
    path = write_record_atomic(tmp_path / "record.json", make_record(1))
    before = path.read_bytes()

    def refuse(src, dst):
        raise PermissionError("read-only")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(PermissionError):
        write_record_atomic(path, make_record(2))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["record.json"]


def test_invalid_or_unserializable_records_are_refused_before_touching_disk(tmp_path):
    path = write_record_atomic(tmp_path / "record.json", make_record(1))
    before = path.read_bytes()
    with pytest.raises(RecordError, match="seed: expected an integer"):
        write_record_atomic(path, make_record(2, seed="two"))
    with pytest.raises(RecordError, match="set"):
        write_record_atomic(path, make_record(2, hparams={"layers": {1, 2}}))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["record.json"]


def test_validation_can_be_skipped_for_salvage_writes(tmp_path):
    path = write_record_atomic(tmp_path / "r.json", {"run_id": "partial"}, validate=False)
    assert json.loads(path.read_text()) == {"run_id": "partial"}


# --- reading --------------------------------------------------------------------------------------

def test_load_record_round_trips(tmp_path):
    record = make_record(5)
    assert load_record(write_record_atomic(tmp_path / "r.json", record)) == record


def test_unreadable_json_names_the_file_and_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "run_id": "x",\n  oops\n}\n')
    with pytest.raises(RecordError) as caught:
        load_record(path)
    assert str(path) in str(caught.value) and "line 3" in str(caught.value)
    assert isinstance(caught.value, SlowrunError)


def test_nan_literals_in_a_file_are_refused(tmp_path):
    path = tmp_path / "nan.json"
    path.write_text(record_to_json(make_record()).replace('"seed": 0', '"seed": NaN'))
    with pytest.raises(RecordError, match="NaN is not valid JSON"):
        load_record(path)


def test_invalid_schema_lists_problems_and_names_the_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(make_record(seed="s", status="nope")))
    with pytest.raises(RecordError) as caught:
        load_record(path)
    message = str(caught.value)
    assert str(path) in message and "seed: expected an integer" in message and "status: must be one of" in message


def test_missing_and_binary_files_are_clear_errors(tmp_path):
    with pytest.raises(RecordError, match="no such record file"):
        load_record(tmp_path / "absent.json")
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(RecordError, match="cannot read"):
        load_record(binary)


def test_utc_timestamp_is_valid_for_created():
    stamp = utc_timestamp()
    assert stamp.endswith("Z") and validate_record(make_record(created=stamp)) == []
