"""`leaderboard add --verify`: a submitted run is scored again in the sandbox and must match its record."""

from __future__ import annotations

import copy
import json
import shutil

from harness.run.reverify import TOLERANCE, compare, reverify_run
from tests.trust.test_attacks import run


def test_compare_flags_each_loss_that_moved_past_the_tolerance():
    record = {"snapshots": [{"tag": "a", "val_loss": 3.0}, {"tag": "b", "val_loss": 2.9}, {"tag": "c", "val_loss": 2.8}],
              "result": {"val_loss": 2.85}}
    evaluation = {"snapshots": [{"tag": "a", "val_loss": 3.0 + 0.5 * TOLERANCE}, {"tag": "b", "val_loss": 2.9 + 2 * TOLERANCE}],
                  "invalid_snapshots": [{"tag": "c", "reason": "failed the causality probe"}],
                  "result": {"val_loss": 2.85 - 3 * TOLERANCE}}
    problems = compare(record, evaluation)
    assert len(problems) == 3
    assert "'b'" in problems[0] and "'c'" in problems[1] and "causality" in problems[1]
    assert problems[2].startswith("result")


def test_an_honest_run_verifies_and_an_edited_one_does_not(synthetic_data, tmp_path):
    run_dir, record = run("forge_files", synthetic_data, tmp_path, target=str(synthetic_data))
    assert record["status"] == "ok"
    problems = reverify_run(run_dir, record, data_dir=synthetic_data)
    assert problems == [], problems

    edited = copy.deepcopy(record)
    edited["result"]["val_loss"] -= 0.01
    edited["snapshots"][0]["val_loss"] -= 0.01
    problems = reverify_run(run_dir, edited, data_dir=synthetic_data)
    assert len(problems) == 2 and all("re-evaluation gives" in p for p in problems)

    # a snapshot swapped for other weights after the run: its hash no longer matches
    weights = run_dir / "snapshots" / "honest" / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-4:] = b"\0\0\0\0"
    weights.write_bytes(bytes(raw))
    problems = reverify_run(run_dir, record, data_dir=synthetic_data)
    assert problems and "invalid" in problems[0]


def test_verify_refuses_other_data(synthetic_data, tmp_path):
    run_dir, record = run("forge_files", synthetic_data, tmp_path, target=str(synthetic_data))
    other = json.loads(json.dumps(record))
    other["track"]["data_hash"] = "f" * 64
    problems = reverify_run(run_dir, other, data_dir=synthetic_data)
    assert len(problems) == 1 and "holds data" in problems[0]
    shutil.rmtree(run_dir / "snapshots")
    assert "snapshots/" in reverify_run(run_dir, record, data_dir=synthetic_data)[0]


def test_verification_links_snapshot_files_and_copies_only_across_file_systems(tmp_path, monkeypatch):
    import errno
    import os

    from harness.run import reverify

    bundle = tmp_path / "bundle" / "snapshots" / "ep1"
    bundle.mkdir(parents=True)
    (bundle / "spec.json").write_text('{"builder": "x"}')
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "abc").write_bytes(b"weights" * 1000)
    os.symlink(cache / "abc", bundle / "model.safetensors")  # a fetched file, as a bundle's view holds it

    reverify._link_snapshot(bundle, tmp_path / "view" / "ep1")
    linked = tmp_path / "view" / "ep1" / "model.safetensors"
    assert not linked.is_symlink() and linked.stat().st_ino == (cache / "abc").stat().st_ino  # no second copy
    assert (tmp_path / "view" / "ep1" / "spec.json").stat().st_ino == (bundle / "spec.json").stat().st_ino

    def other_file_system(source, target):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(reverify.os, "link", other_file_system)
    reverify._link_snapshot(bundle, tmp_path / "copied" / "ep1")
    copied = tmp_path / "copied" / "ep1" / "model.safetensors"
    assert copied.read_bytes() == b"weights" * 1000 and copied.stat().st_ino != (cache / "abc").stat().st_ino
