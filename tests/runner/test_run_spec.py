"""run.json typed: every run folder's spec reads the same (old folders too), round-trips key for key, keeps
what a newer version added, cannot be changed by accident, and a broken one says what is wrong."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from harness.errors import SlowrunError
from harness.formats.run_spec import RUN_SPEC, RunSpec, read_run_spec, write_run_spec

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "runs-6d94ceb.tar.gz"


@pytest.fixture
def old_specs(tmp_path) -> dict[str, dict]:
    """The run.json of each run folder in the committed fixture (made by an earlier version)."""
    with tarfile.open(FIXTURE) as archive:
        archive.extractall(tmp_path, filter="data")
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(tmp_path.glob(f"*/{RUN_SPEC}"))}


def test_an_old_folders_spec_reads_back_key_for_key(old_specs, tmp_path):
    assert old_specs, "the fixture holds run folders"
    for name, raw in old_specs.items():
        spec = RunSpec.from_json(raw)
        assert spec.run_id == raw["run_id"] and spec.budget == raw["budget"] and spec.device == raw["device"]
        assert spec.track_spec.seq_len == raw["track"]["seq_len"]
        written = spec.to_json()
        for key, value in raw.items():  # nothing the folder said is lost or changed
            assert written[key] == value, (name, key)
        folder = tmp_path / "again" / name
        folder.mkdir(parents=True)
        write_run_spec(folder, spec)
        assert read_run_spec(folder) == spec


def test_keys_an_older_version_did_not_write_take_the_value_it_behaved_as(old_specs):
    raw = dict(next(iter(old_specs.values())))
    for key in ("eval_graphs", "eval_dtype", "eval_workers", "max_snapshots", "eval_batch_size", "allow_read",
                "pass_env", "timeout_s"):
        raw.pop(key, None)
    spec = RunSpec.from_json(raw)
    assert (spec.eval_graphs, spec.eval_dtype, spec.eval_workers, spec.max_snapshots, spec.eval_batch_size,
            spec.allow_read, spec.pass_env, spec.timeout_s) == (True, "float32", 1, 4096, 16, (), (), None)


def test_a_key_from_a_newer_version_is_written_back_unchanged(old_specs):
    raw = {**next(iter(old_specs.values())), "wandb": {"project": "p", "id": "abc"}}
    spec = RunSpec.from_json(raw)
    assert spec.to_json()["wandb"] == {"project": "p", "id": "abc"}
    assert spec.replace(eval_dtype="bfloat16").to_json()["wandb"] == {"project": "p", "id": "abc"}


def test_a_spec_cannot_be_changed_in_place(old_specs):
    spec = RunSpec.from_json(next(iter(old_specs.values())))
    with pytest.raises(TypeError):
        spec.hparams["lr"] = 1.0  # type: ignore[index]
    with pytest.raises(AttributeError):
        spec.allow_read.append("/")  # type: ignore[attr-defined]
    changed = spec.replace(allow_read=["/opt/shared"])
    assert changed.allow_read == ("/opt/shared",) and spec.allow_read != changed.allow_read


def test_a_broken_spec_says_what_is_wrong(tmp_path):
    with pytest.raises(SlowrunError, match="not a run folder"):
        read_run_spec(tmp_path)
    (tmp_path / RUN_SPEC).write_text("{not json")
    with pytest.raises(SlowrunError, match="unreadable"):
        read_run_spec(tmp_path)
    (tmp_path / RUN_SPEC).write_text(json.dumps({"device": "cpu"}))
    with pytest.raises(SlowrunError, match="missing .*budget"):
        read_run_spec(tmp_path)
