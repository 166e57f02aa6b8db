"""What `leaderboard add` refuses beyond the schema: each rule broken once, by one edit of a valid record."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import math
import re
import sys
import types
from datetime import datetime, timedelta, timezone

import pytest

from harness.errors import LeaderboardError, RecordError
from harness.formats.method_toml import method_hash
from harness.formats.records import record_to_json, utc_timestamp, write_record_atomic
from leaderboard.add import add_record, parse_floors
from leaderboard.cli import main
from leaderboard.verify import verify_record_bounds
from tests.leaderboard.factory import DATA_HASH, make_record, write_board

# What `slowrun prepare --track synthetic` gives, and its true language's loss on those validation windows
# (written out here: the table in harness/rules/official_hashes.py is checked against preparation in tests/data).
SYNTHETIC_HASH = "1a9a8fd7bf3f017004ddd833eb370eb8e9b308a77dd3b52cbb8f4f4cf63b68a0"
SYNTHETIC_FLOOR = 2.1370458


def official(index: int = 0, **overrides) -> dict:
    """A valid record on the official synthetic data (the factory's losses start at 3.0, above the floor)."""
    return make_record(index, **{"track__data_hash": SYNTHETIC_HASH, **overrides})


def run_dir_with(tmp_path, record, name="run"):
    folder = tmp_path / name
    write_record_atomic(folder / "record.json", record)
    return folder


def refused(tmp_path, record, *, match, error=LeaderboardError, **kwargs):
    records = tmp_path / "records"
    before = sorted(records.rglob("*"))
    with pytest.raises(error, match=match) as caught:
        add_record(run_dir_with(tmp_path, record, "refused"), records, **kwargs)
    assert sorted(records.rglob("*")) == before  # nothing was filed
    return str(caught.value)


# --- a valid record, and the official data -----------------------------------------------------------

def test_a_valid_record_on_official_data_goes_in_without_new_track(tmp_path):
    path = add_record(run_dir_with(tmp_path, official(0)), tmp_path / "records")
    assert path == tmp_path / "records" / "synthetic" / "method-0-run-00000.json"
    assert path.read_text(encoding="utf-8") == record_to_json(official(0))


def test_other_data_on_an_official_track_is_refused_whatever_the_flags(tmp_path):
    message = refused(tmp_path, make_record(0), match="not the track's official data",
                      known_tracks={"synthetic": {DATA_HASH}}, new_track=True)
    assert DATA_HASH[:12] in message and SYNTHETIC_HASH[:12] in message and "official_hashes.py" in message


def test_a_track_without_official_hashes_falls_back_to_the_board(tmp_path):
    record = make_record(0, track__name="fineweb")  # its official set is still empty
    refused(tmp_path, record, match="new to this board")
    assert add_record(run_dir_with(tmp_path, record), tmp_path / "records", new_track=True).exists()


# --- bounds ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, expected", [
    ({"result__val_loss": 2.0}, r"result\.val_loss: 2\.0 is below 2\.137"),
    ({"snapshots__1__val_loss": 1.5}, r"snapshots\[1\]\.val_loss: 1\.5 is below 2\.137"),
    ({"k_sweep__0__val_loss": 2.1}, r"k_sweep\[0\]\.val_loss: 2\.1 is below 2\.137"),
    ({"curve__2__val_loss": 0.3}, r"curve\[2\]\.val_loss: 0\.3 is below 2\.137"),
    ({"result__val_bpb": -1.0}, r"result\.val_bpb: a loss cannot be negative"),
    ({"metered__epochs": 8.001}, r"metered\.epochs: 8\.001 is more than the budget of 8\.0"),
    ({"metered__train_tokens": 800_001, "metered__per_stream": {"main": 800_001}},
     r"metered\.train_tokens: 800,001 is more than 8\.0 epochs of 100,000 tokens"),
    ({"metered__epoch_tokens": 100_001}, r"metered\.epoch_tokens: must be a whole number .* got 100001"),
    ({"metered__per_stream": {"main": 400_000}}, r"metered\.per_stream: the streams served 400,000 tokens"),
    ({"downstream__piqa__acc": 1.2}, r"downstream\['piqa'\]\.acc: a score must be a number between 0 and 1"),
    ({"downstream__sciq__acc_norm": -0.1}, r"downstream\['sciq'\]\.acc_norm: a score must be"),
    ({"downstream__sciq__acc_stderr": -0.01}, r"downstream\['sciq'\]\.acc_stderr: a standard error cannot"),
    ({"downstream_average": {"acc": 1.5, "acc_norm": 0.5}}, r"downstream_average\.acc: a score must be"),
    ({"ensemble__members": [{"tag": "s2", "weight": 0.4}, {"tag": "s3", "weight": 0.5}]},
     r"ensemble\.members: the weights sum to 0\.9, not 1"),
    ({"ensemble__members": [{"tag": "s2", "weight": 0.4}, {"tag": "s3", "weight": 0.600002}]},
     r"ensemble\.members: the weights sum to 1\.000002"),
    ({"k_sweep__1__members": [{"tag": "s3", "weight": 0.5}, {"tag": "gone", "weight": 0.5}]},
     r"k_sweep\[1\]\.members\[1\]\.tag: 'gone' names no snapshot"),
])
def test_each_bound_refuses_the_record(tmp_path, overrides, expected):
    message = refused(tmp_path, official(0, **overrides), match=expected)
    assert message.count("\n  ") == 1  # one edit, one problem


def test_a_stated_epoch_is_the_cap_and_the_unit(tmp_path):
    """800,000 tokens over a 90,000-token epoch: past 8 epochs' cap, and not the 8.0 epochs stated."""
    message = refused(tmp_path, official(0, metered__epoch_tokens=90_000), match="refused, 2 problem")
    assert "metered.train_tokens: 800,000 is more than 8.0 epochs of 90,000 tokens allow (720,000)" in message
    assert f"metered.epochs: 8.0, but 800,000 tokens over an epoch of 90,000 are {800_000 / 90_000!r}" in message


def test_within_tolerances_is_accepted(tmp_path):
    record = official(0, metered__epochs=8.0 * (1 + 1e-10), result__val_loss=SYNTHETIC_FLOOR + 1e-6,
                      ensemble__members=[{"tag": "s2", "weight": 0.4}, {"tag": "s3", "weight": 0.6000005}],
                      metered__epoch_tokens=100_000, downstream__piqa__acc=1.0, downstream__sciq__acc_norm=0.0)
    assert add_record(run_dir_with(tmp_path, record), tmp_path / "records").exists()


def test_a_member_that_names_no_snapshot_is_refused(tmp_path):
    record = official(0, ensemble__members=[{"tag": "s2", "weight": 0.5}, {"tag": "nowhere", "weight": 0.5}])
    refused(tmp_path, record, match=r"ensemble\.members\[1\]\.tag: 'nowhere' names no snapshot", error=RecordError)
    assert any("'nowhere' names no snapshot" in p for p in verify_record_bounds(record))


def test_values_json_cannot_carry_are_caught_when_checked_directly():
    record = official(0)
    record["result"]["val_loss"] = math.nan
    record["ensemble"]["members"][0]["weight"] = math.inf
    problems = verify_record_bounds(record)
    assert "result.val_loss: must be a finite number, got nan" in problems
    assert "ensemble.members[0].weight: must be a finite number >= 0, got inf" in problems


def test_a_negative_loss_is_refused_on_a_track_without_a_floor(tmp_path):
    refused(tmp_path, make_record(0, track__name="lab", result__val_loss=-0.5), new_track=True,
            match=r"result\.val_loss: a loss cannot be negative, got -0\.5")


def test_floors_can_be_given_per_track(tmp_path):
    record = make_record(0, track__name="lab")  # result.val_loss 3.0
    refused(tmp_path, record, new_track=True, floors=parse_floors(["lab=3.5"]), match=r"3\.0 is below 3\.5")
    assert add_record(run_dir_with(tmp_path, record), tmp_path / "records", new_track=True,
                      floors={"other": 9.0}).exists()
    # the built-in floor stays in force beside the given ones
    refused(tmp_path, official(1, result__val_loss=2.0), floors={"lab": 1.0}, match="below 2.137")


@pytest.mark.parametrize("pair", ["lab", "lab=", "lab=x", "lab=-1", "lab=nan", "=2"])
def test_floor_syntax_errors_say_the_form(pair):
    with pytest.raises(LeaderboardError, match="NAME=LOSS"):
        parse_floors([pair])


def test_a_record_from_the_future_is_refused(tmp_path):
    now = datetime.now(timezone.utc)
    future = official(0, created=utc_timestamp(now + timedelta(minutes=10)))
    refused(tmp_path, future, match="created: .* is in the future")
    skewed = official(1, created=utc_timestamp(now + timedelta(minutes=2)))  # within the allowed clock skew
    assert add_record(run_dir_with(tmp_path, skewed), tmp_path / "records").exists()
    fixed = datetime(2025, 1, 1, 0, 4, tzinfo=timezone.utc)
    assert verify_record_bounds(official(0, created="2025-01-01T00:08:59Z"), now=fixed) == []
    assert len(verify_record_bounds(official(0, created="2025-01-01T00:09:01Z"), now=fixed)) == 1


# --- bidirectional controls ------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, where, code", [
    ({"method__name": "good\u202eeman"}, "method.name", "U+202E"),
    ({"method__description": "a \u202a description"}, "method.description", "U+202A"),
    ({"method__authors": ["A. Author", "B\u2067"]}, r"method.authors\[1\]", "U+2067"),
    ({"run_id": "run-\u200f1"}, "run_id", "U+200F"),
    ({"snapshots__0__tag": "s\u20660"}, r"snapshots\[0\].tag", "U+2066"),
    ({"hparams": {"lr\u200e": 0.01}}, r"hparams: the key 'lr\\u200e'", "U+200E"),
    ({"hparams": {"note": "x\u061cy"}}, "hparams.note", "U+061C"),
    ({"hparams": {"deep": {"list": ["\u2069"]}}}, r"hparams.deep.list\[0\]", "U+2069"),
])
def test_bidirectional_controls_are_refused(tmp_path, overrides, where, code):
    message = refused(tmp_path, official(0, **overrides), match=f"{where}: .*{re.escape(code)}")
    assert "remove them" in message


def test_other_unicode_is_welcome(tmp_path):
    record = official(0, method__name="Über-模型 ✓", method__authors=["Zoë", "محمد"])
    assert add_record(run_dir_with(tmp_path, record), tmp_path / "records").exists()


# --- the method hash -------------------------------------------------------------------------------

def test_the_method_folder_must_hash_to_the_record(tmp_path):
    method = tmp_path / "method"
    method.mkdir()
    (method / "method.toml").write_text('[method]\nname = "m"\n')
    (method / "train.py").write_text("def main(ctx):\n    pass\n")
    stated = method_hash(method)
    record = official(0, method__hash=stated)
    (method / "train.py").write_text("def main(ctx):\n    ctx.cheat()\n")
    message = refused(tmp_path, record, method_dir=method, match="method.hash: the record says")
    assert stated in message and method_hash(method) in message and stated != method_hash(method)

    (method / "train.py").write_text("def main(ctx):\n    pass\n")
    (method / "__pycache__").mkdir()
    (method / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"\0cache")  # caches do not count
    assert add_record(run_dir_with(tmp_path, record), tmp_path / "records", method_dir=method).exists()


def test_a_method_dir_that_is_not_a_folder_is_a_clear_error(tmp_path):
    refused(tmp_path, official(0), method_dir=tmp_path / "nowhere", match="--method-dir .* not a folder")


# --- duplicates ------------------------------------------------------------------------------------

def test_a_run_already_on_the_board_under_another_file_is_refused(tmp_path):
    records = tmp_path / "records"
    first = add_record(run_dir_with(tmp_path, official(0)), records)
    renamed = official(0, method__name="renamed")  # same run, other method name: another file
    with pytest.raises(LeaderboardError, match="run 'run-00000' is already on the board as "
                                               "synthetic/method-0-run-00000.json"):
        add_record(run_dir_with(tmp_path, renamed, "renamed"), records)
    assert [p.name for p in records.rglob("*.json")] == [first.name]


def test_a_run_filed_by_hand_counts_too(tmp_path):
    records = tmp_path / "records"
    write_board(records, [official(3)], track_folder="synthetic")  # records/synthetic/run-00003.json
    with pytest.raises(LeaderboardError, match="already on the board as synthetic/run-00003.json"):
        add_record(run_dir_with(tmp_path, official(3)), records)


def test_the_identical_record_twice_is_a_no_op(tmp_path):
    records = tmp_path / "records"
    run = run_dir_with(tmp_path, official(0))
    first = add_record(run, records)
    before = first.stat().st_mtime_ns, first.read_bytes()
    assert add_record(run, records) == first
    assert (first.stat().st_mtime_ns, first.read_bytes()) == before
    assert len(list(records.rglob("*.json"))) == 1


# --- the verify hook -------------------------------------------------------------------------------

def test_the_verify_hook_sees_the_run_and_its_problems_refuse(tmp_path):
    calls = []

    def verify(run_dir, record):
        calls.append((run_dir, record["run_id"]))
        return ["snapshots[3]: does not reproduce its stated loss"] if record["seed"] == 1 else []

    bad = run_dir_with(tmp_path, official(1), "bad")
    with pytest.raises(LeaderboardError, match=r"verification .* failed:\n  snapshots\[3\]: does not reproduce"):
        add_record(bad, tmp_path / "records", verify=verify)
    good = run_dir_with(tmp_path, official(0), "good")
    assert add_record(good / "record.json", tmp_path / "records", verify=verify).exists()
    assert calls == [(bad, "run-00001"), (good, "run-00000")]


def without_harness_verify(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.delitem(sys.modules, "harness.run.reverify", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *rest: None if name == "harness.run.reverify" else real(name, *rest))


def test_cli_verify_without_the_module_exits_2(tmp_path, capsys, monkeypatch):
    without_harness_verify(monkeypatch)
    run = run_dir_with(tmp_path, official(0))
    assert main(["leaderboard", "add", str(run), "--records", str(tmp_path / "records"), "--verify"]) == 2
    assert "--verify needs harness.run.reverify" in capsys.readouterr().err
    assert not (tmp_path / "records").exists()


def test_cli_verify_calls_reverify_run(tmp_path, capsys, monkeypatch):
    module = types.ModuleType("harness.run.reverify")
    module.__spec__ = importlib.machinery.ModuleSpec("harness.run.reverify", None)
    module.reverify_run = lambda run_dir, record, **options: [f"{run_dir.name}: snapshot files missing"]
    monkeypatch.setitem(sys.modules, "harness.run.reverify", module)
    run = run_dir_with(tmp_path, official(0))
    assert main(["leaderboard", "add", str(run), "--records", str(tmp_path / "records"), "--verify"]) == 2
    assert "run: snapshot files missing" in capsys.readouterr().err


def test_cli_method_dir_and_floor(tmp_path, capsys):
    run = run_dir_with(tmp_path, make_record(0, track__name="lab"))
    args = ["leaderboard", "add", str(run), "--records", str(tmp_path / "records"), "--new-track"]
    assert main([*args, "--floor", "lab=3.25"]) == 2
    assert "below 3.25" in capsys.readouterr().err
    assert main([*args, "--method-dir", str(tmp_path / "nowhere")]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert main(args) == 0
