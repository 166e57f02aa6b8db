"""Submission bundles: `slowrun submit` packs a method's runs, `slowrun leaderboard add BUNDLE` files them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from harness.errors import LeaderboardError
from harness.formats.method_toml import method_hash
from leaderboard.add import add_submission
from leaderboard.bundle import create_bundle, parse_size, read_bundle
from leaderboard.cli import main
from tests.leaderboard.factory import make_record

TRACK = "toy"
WEIGHT_SIZES = (1000, 5000, 1500, 8000)  # bytes of the four snapshots' weights




def make_run(root: Path, method_dir: Path, seed: int, loss: float) -> Path:
    run_dir = root / f"run-s{seed}"
    run_dir.mkdir(parents=True)
    record = make_record(seed, run_id=f"my-method-s{seed}", seed=seed, method__name="my_method",
                         method__hash=method_hash(method_dir), track__name=TRACK, result__val_loss=loss)
    (run_dir / "record.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    (run_dir / "run.json").write_text(json.dumps({"method_dir": str(method_dir)}))
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "loss": 4.0}\n')
    for snapshot, size in zip(record["snapshots"], WEIGHT_SIZES):
        folder = run_dir / "snapshots" / snapshot["tag"]
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(bytes([seed]) * size)
        (folder / "spec.json").write_text(json.dumps({"tag": snapshot["tag"]}))
    return run_dir


@pytest.fixture
def runs(tmp_path, method_dir) -> list[Path]:
    return [make_run(tmp_path / "runs", method_dir, seed, 3.01 + 0.001 * seed) for seed in range(3)]


def test_bundle_holds_method_records_logs_manifest_environment_and_readme(tmp_path, runs, method_dir):
    bundle = create_bundle(runs, tmp_path / "bundle", weights_up_to=2000)
    root = bundle.root
    assert sorted(p.relative_to(root / "method").as_posix() for p in (root / "method").rglob("*") if p.is_file()) == [
        "method.toml", "train.py"]
    assert method_hash(root / "method") == method_hash(method_dir)
    assert [r.record["seed"] for r in bundle.runs] == [0, 1, 2]
    for seed, run in enumerate(runs):
        folder = root / "runs" / f"my-method-s{seed}"
        assert (folder / "record.json").read_bytes() == (run / "record.json").read_bytes()
        assert (folder / "metrics.jsonl").read_bytes() == (run / "metrics.jsonl").read_bytes()
        manifest = json.loads((folder / "snapshots.json").read_text())
        for item, size in zip(manifest, WEIGHT_SIZES):
            expected = "sha256:" + hashlib.sha256(bytes([seed]) * size).hexdigest()
            assert (item["weights_sha256"], item["bytes"]) == (expected, size)
            assert item["included"] == (size <= 2000)
            assert (folder / "snapshots" / item["tag"] / "model.safetensors").is_file() == (size <= 2000)
    environment = json.loads((root / "environment.json").read_text())
    assert sorted(environment["runs"]) == ["my-method-s0", "my-method-s1", "my-method-s2"]
    assert "# my_method" in (root / "README.md").read_text()
    assert read_bundle(root).runs == bundle.runs


def test_a_changed_method_folder_or_mixed_methods_are_refused(tmp_path, runs, method_dir):
    (method_dir / "train.py").write_text("def main(ctx):\n    return 1\n")
    with pytest.raises(LeaderboardError, match="changed after the runs"):
        create_bundle(runs, tmp_path / "bundle")


def test_runs_of_two_methods_are_refused(tmp_path, runs, method_dir):
    other = tmp_path / "other"
    other.mkdir()
    (other / "train.py").write_text("x = 1\n")
    odd = make_run(tmp_path / "more", other, 7, 3.2)
    with pytest.raises(LeaderboardError, match="different method folders"):
        create_bundle(runs + [odd], tmp_path / "bundle")


def test_add_files_every_run_of_a_bundle_and_dry_run_writes_nothing(tmp_path, runs):
    create_bundle(runs, tmp_path / "bundle")
    records = tmp_path / "records"
    planned = add_submission(tmp_path / "bundle", records, new_track=True, dry_run=True)
    assert len(planned) == 3 and not records.exists()
    filed = add_submission(tmp_path / "bundle", records, new_track=True)
    assert filed == planned and all(path.is_file() for path in filed)


def test_a_tampered_bundle_is_refused_before_anything_is_filed(tmp_path, runs):
    create_bundle(runs, tmp_path / "bundle")
    record_path = tmp_path / "bundle" / "runs" / "my-method-s1" / "record.json"
    record = json.loads(record_path.read_text())
    record["result"]["val_loss"] = 2.5
    record_path.write_text(json.dumps(record))
    with pytest.raises(LeaderboardError, match="changed since the bundle was made"):
        add_submission(tmp_path / "bundle", tmp_path / "records", new_track=True)
    assert not (tmp_path / "records").exists()


def test_verification_marks_the_filed_records_verified(tmp_path, runs):
    create_bundle(runs, tmp_path / "bundle")
    seen = []
    filed = add_submission(tmp_path / "bundle", tmp_path / "records", new_track=True,
                           verify=lambda folder, record: seen.append(record["run_id"]) or [])
    assert sorted(seen) == ["my-method-s0", "my-method-s1", "my-method-s2"]  # each run verified once
    assert all(json.loads(p.read_text())["verified"]["ok"] is True for p in filed)


def test_submit_and_add_from_the_command_line(tmp_path, runs, capsys):
    assert main(["submit", *map(str, runs), "--out", str(tmp_path / "bundle"), "--weights-up-to", "1KB"]) == 0
    assert main(["leaderboard", "add", str(tmp_path / "bundle"), "--records", str(tmp_path / "records"),
                 "--new-track", "--dry-run"]) == 0
    assert capsys.readouterr().out.count("would file ") == 3 and not (tmp_path / "records").exists()
    assert main(["submit", str(runs[0]), "--out", str(tmp_path / "bundle")]) == 2  # not an empty folder


def test_sizes_parse():
    assert (parse_size("0"), parse_size("200MB"), parse_size("1.5G"), parse_size("10 kb")) == (
        0, 200_000_000, 1_500_000_000, 10_000)
    with pytest.raises(LeaderboardError):
        parse_size("lots")


def test_a_bundle_takes_nothing_from_the_methods_writable_folders(tmp_path, runs):
    """What the method wrote (its scratch and outbox, links to the packer's files included) never enters
    a bundle: only the harness's record, metrics and snapshots do."""
    import os

    secret = tmp_path / "secret.txt"
    secret.write_text("the packer's private key\n")
    for run_dir in runs:
        for folder in ("sandbox/scratch", "sandbox/outbox"):
            (run_dir / folder).mkdir(parents=True)
            os.symlink(secret, run_dir / folder / "looks-like-weights.safetensors")
            os.symlink(tmp_path, run_dir / folder / "a-folder")
    bundle = create_bundle(runs, tmp_path / "bundle", weights_up_to=10**6)
    files = [p for p in bundle.root.rglob("*") if p.is_file()]
    assert not any("sandbox" in p.relative_to(bundle.root).parts for p in files)
    assert not any(p.read_bytes() == secret.read_bytes() for p in files)


def test_a_snapshot_keeps_its_tag_as_its_folder_in_a_bundle():
    from leaderboard.bundle import snapshot_folder_name
    from leaderboard.naming import slug

    for tag in ("ep001.000", "m0-", "cycle_", "t1-c003-cut"):  # valid tags, some of which a slug would change
        assert snapshot_folder_name(tag) == tag
    assert slug("m0-") != "m0-"  # the name --verify looks up would have been missed
    assert snapshot_folder_name("../escape") == slug("../escape") and "/" not in snapshot_folder_name("../escape")
