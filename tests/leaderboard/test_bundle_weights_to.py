"""`slowrun submit --weights-to URL` and `leaderboard add BUNDLE --verify` fetching what the bundle names by URL.

A bundle whose weights travel by URL must file exactly as the same bundle with its weights inside: the
verifier is shown the same snapshot files, and the same records are filed. On file:// and memory://,
through the same put and fetch that serve s3:// and hf://.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
import sys
import types
import uuid
from pathlib import Path

import fsspec
import pytest

from harness.errors import LeaderboardError
from harness.formats.method_toml import method_hash
from leaderboard.add import add_submission
from leaderboard.bundle import create_bundle, read_bundle
from leaderboard.cli import main
from leaderboard.storage import cache_path
from tests.leaderboard.test_bundle import WEIGHT_SIZES, make_run
from tests.leaderboard.test_storage import remote_bytes, write_remote

GRAPH_BYTES = b'{"graph": "exported forward"}'
CONSTANTS_BYTES = b"\x01\x02constants"
EVERYTHING = 10**9  # --weights-up-to that includes every snapshot




@pytest.fixture
def runs(tmp_path, method_dir) -> list[Path]:
    """Two finished runs of four snapshots each; snapshot s1 of each also holds an exported graph."""
    made = [make_run(tmp_path / "runs", method_dir, seed, 3.01 + 0.001 * seed) for seed in range(2)]
    for run_dir in made:
        (run_dir / "snapshots" / "s1" / "graph.json").write_bytes(GRAPH_BYTES)
        (run_dir / "snapshots" / "s1" / "graph-constants.safetensors").write_bytes(CONSTANTS_BYTES)
    return made




def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def weights(seed: int, size: int) -> bytes:
    return bytes([seed]) * size  # what make_run writes


def snapshots_json(bundle: Path, seed: int) -> list[dict]:
    return json.loads((bundle / "runs" / f"my-method-s{seed}" / "snapshots.json").read_text())


class Seen:
    """A verifier that records the snapshot files it was shown (name -> sha256, per tag) and agrees."""

    def __init__(self):
        self.by_run: dict[str, dict] = {}

    def __call__(self, run_dir: Path, record: dict) -> list[str]:
        self.by_run[record["run_id"]] = {
            folder.name: {p.name: sha(p.read_bytes()) for p in sorted(folder.iterdir())}
            for folder in sorted((run_dir / "snapshots").iterdir())}
        return []


def test_the_bundle_names_every_file_left_out_by_url_and_sha256(tmp_path, runs, method_dir, storage_base):
    bundle = create_bundle(runs, tmp_path / "bundle", weights_up_to=2000, weights_to=storage_base)
    method = f"my_method-{method_hash(method_dir)[7:19]}"
    for seed in range(2):
        for item, size in zip(snapshots_json(bundle.root, seed), WEIGHT_SIZES):
            tag, data = item["tag"], weights(seed, size)
            assert (item["weights_sha256"], item["bytes"]) == (sha(data), size)
            if size <= 2000:  # in the bundle itself: no URL needed
                assert item["included"] and "remote" not in item
                continue
            where = f"{storage_base}/{method}/my-method-s{seed}/{tag}"
            expected = {"model.safetensors": {"url": f"{where}/model.safetensors", "sha256": sha(data), "bytes": size}}
            if tag == "s1":
                expected["graph.json"] = {"url": f"{where}/graph.json", "sha256": sha(GRAPH_BYTES),
                                          "bytes": len(GRAPH_BYTES)}
                expected["graph-constants.safetensors"] = {"url": f"{where}/graph-constants.safetensors",
                                                           "sha256": sha(CONSTANTS_BYTES), "bytes": len(CONSTANTS_BYTES)}
            assert not item["included"] and item["remote"] == expected
            assert {name: remote_bytes(entry["url"]) for name, entry in item["remote"].items()} == {
                "model.safetensors": data, **({"graph.json": GRAPH_BYTES, "graph-constants.safetensors": CONSTANTS_BYTES}
                                              if tag == "s1" else {})}
            assert not (bundle.root / "runs" / f"my-method-s{seed}" / "snapshots" / tag / "model.safetensors").exists()
    assert len(bundle.uploaded) == 2 * (3 + 1)  # per run: s1 with its graph's two files, and s3
    assert not any(s.skipped for s in bundle.uploaded)
    assert read_bundle(bundle.root).runs == bundle.runs


def test_fetched_weights_verify_and_file_as_included_weights_do(tmp_path, runs, storage_base):
    create_bundle(runs, tmp_path / "inside", weights_up_to=EVERYTHING)
    create_bundle(runs, tmp_path / "outside", weights_to=storage_base)
    assert all("remote" in item for seed in range(2) for item in snapshots_json(tmp_path / "outside", seed))

    inside, outside = Seen(), Seen()
    filed_inside = add_submission(tmp_path / "inside", tmp_path / "records-inside", new_track=True, verify=inside)
    filed_outside = add_submission(tmp_path / "outside", tmp_path / "records-outside", new_track=True,
                                   verify=outside, fetch_to=tmp_path / "cache", fetch_local=(tmp_path,))
    assert outside.by_run == inside.by_run and sorted(inside.by_run) == ["my-method-s0", "my-method-s1"]
    assert inside.by_run["my-method-s0"]["s1"] == {
        "graph-constants.safetensors": sha(CONSTANTS_BYTES), "graph.json": sha(GRAPH_BYTES),
        "model.safetensors": sha(weights(0, 5000)), "spec.json": sha(b'{"tag": "s1"}')}
    assert [p.read_bytes() for p in filed_outside] == [p.read_bytes() for p in filed_inside]
    assert all(json.loads(p.read_text())["verified"]["ok"] for p in filed_outside)
    assert cache_path(tmp_path / "cache", sha(weights(1, 8000))).read_bytes() == weights(1, 8000)


def test_a_tampered_remote_file_is_refused_and_nothing_is_filed(tmp_path, runs, storage_base):
    create_bundle(runs, tmp_path / "bundle", weights_to=storage_base)
    entry = snapshots_json(tmp_path / "bundle", 1)[2]["remote"]["model.safetensors"]
    write_remote(entry["url"], b"\0" * entry["bytes"])  # same size, other bytes
    seen = Seen()
    with pytest.raises(LeaderboardError) as caught:
        add_submission(tmp_path / "bundle", tmp_path / "records", new_track=True, verify=seen,
                       fetch_to=tmp_path / "cache", fetch_local=(tmp_path,))
    message = str(caught.value)
    assert entry["url"] in message and entry["sha256"][7:] in message and sha(b"\0" * 1500)[7:] in message
    assert "my-method-s1" not in seen.by_run  # never re-evaluated on the wrong weights
    assert not (tmp_path / "records").exists()
    assert not cache_path(tmp_path / "cache", entry["sha256"]).exists()


def test_an_unreachable_url_is_refused_and_nothing_is_filed(tmp_path, runs, storage_base):
    create_bundle(runs, tmp_path / "bundle", weights_to=storage_base)
    entry = snapshots_json(tmp_path / "bundle", 0)[3]["remote"]["model.safetensors"]
    fs, path = fsspec.core.url_to_fs(entry["url"])
    fs.rm(path)
    with pytest.raises(LeaderboardError, match=r"snapshot 's3', model\.safetensors: .*cannot fetch it"):
        add_submission(tmp_path / "bundle", tmp_path / "records", new_track=True, verify=Seen(),
                       fetch_to=tmp_path / "cache", fetch_local=(tmp_path,))
    assert not (tmp_path / "records").exists()


def test_a_second_submit_sends_nothing_already_there(tmp_path, runs, storage_base, capsys):
    create_bundle(runs, tmp_path / "first", weights_to=storage_base)
    assert main(["submit", *map(str, runs), "--out", str(tmp_path / "second"), "--weights-to", storage_base]) == 0
    captured = capsys.readouterr()
    assert f"0 file(s) uploaded to {storage_base}, 12 already there" in captured.out
    assert captured.err.count("already there with the same size and sha256, not sent again") == 2 * 6
    assert [snapshots_json(tmp_path / "second", s) for s in range(2)] == [snapshots_json(tmp_path / "first", s)
                                                                          for s in range(2)]


def test_a_failed_upload_leaves_no_half_made_bundle(tmp_path, runs, method_dir):
    base = f"memory://slowrun-blocked-{uuid.uuid4().hex}"
    write_remote(f"{base}/my_method-{method_hash(method_dir)[7:19]}", b"a file where a folder must go")
    try:
        with pytest.raises(LeaderboardError, match="cannot upload to it"):
            create_bundle(runs, tmp_path / "bundle", weights_to=base)
        assert not (tmp_path / "bundle").exists()
    finally:
        fsspec.filesystem("memory").rm(base, recursive=True)


def rewrite_snapshots_json(bundle: Path, seed: int, manifest: list[dict]) -> None:
    """Edit a bundle's snapshots.json and re-seal bundle.json, as a submitter could."""
    relpath = f"runs/my-method-s{seed}/snapshots.json"
    (bundle / relpath).write_text(json.dumps(manifest))
    seal = json.loads((bundle / "bundle.json").read_text())
    seal["files"][relpath] = sha((bundle / relpath).read_bytes())
    (bundle / "bundle.json").write_text(json.dumps(seal))


@pytest.mark.parametrize("edit, complaint", [
    (lambda item: item.update(tag="../../outside"), r"'\.\./\.\./outside' is not a snapshot tag"),
    (lambda item: item["remote"].update({"train.py": item["remote"]["model.safetensors"]}),
     r"'train\.py' is not a snapshot file"),
    (lambda item: item.update(weights_sha256=sha(b"other")), "the bundle disagrees with itself"),
])
def test_a_bundle_naming_paths_outside_a_snapshot_is_refused(tmp_path, runs, edit, complaint):
    base = (tmp_path / "bucket").as_uri()
    create_bundle(runs, tmp_path / "bundle", weights_to=base)
    manifest = snapshots_json(tmp_path / "bundle", 0)
    edit(manifest[2])
    rewrite_snapshots_json(tmp_path / "bundle", 0, manifest)
    with pytest.raises(LeaderboardError, match=complaint):
        add_submission(tmp_path / "bundle", tmp_path / "records", new_track=True, verify=Seen(),
                       fetch_to=tmp_path / "cache", fetch_local=(tmp_path,))
    assert not (tmp_path / "records").exists() and not (tmp_path / "cache").exists()


def test_the_command_line_round_trip(tmp_path, runs, monkeypatch, capsys):
    """`slowrun submit --weights-to` then `slowrun leaderboard add --verify --fetch-to`, with the re-evaluation
    replaced by one that records what it was given (the real one is run in the next test)."""
    seen = Seen()
    module = types.ModuleType("harness.run.reverify")
    module.__spec__ = importlib.machinery.ModuleSpec("harness.run.reverify", None)
    module.reverify_run = lambda run_dir, record, **options: seen(run_dir, record)
    monkeypatch.setitem(sys.modules, "harness.run.reverify", module)
    base = f"{tmp_path}/plain folder"  # a plain path becomes a file:// URL
    assert main(["submit", *map(str, runs), "--out", str(tmp_path / "bundle"), "--weights-to", base]) == 0
    assert f"12 file(s) uploaded to {base}, 0 already there" in capsys.readouterr().out
    assert snapshots_json(tmp_path / "bundle", 0)[0]["remote"]["model.safetensors"]["url"].startswith(
        f"file://{tmp_path}/plain folder/my_method-")
    assert main(["leaderboard", "add", str(tmp_path / "bundle"), "--records", str(tmp_path / "records"),
                 "--new-track", "--verify", "--fetch-to", str(tmp_path / "cache"), "--fetch-local", str(tmp_path)]) == 0
    assert capsys.readouterr().out.count(str(tmp_path / "records")) == 2
    assert seen.by_run["my-method-s1"]["s3"]["model.safetensors"] == sha(weights(1, 8000))
    assert len(list((tmp_path / "cache" / "sha256").rglob("*/*"))) == 2 * 4 + 2  # weights + s1's graph files


# --- a real run, re-evaluated from fetched weights ------------------------------------------------------

HONEST = '''
import torch
import torch.nn.functional as F
from tests.runner.tiny_model import Bigram


def main(ctx):
    torch.manual_seed(ctx.seed)
    model = Bigram(ctx.vocab_size)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    stream = ctx.train_stream("main", batch_size=16)
    for tag in ("half", "whole"):
        while ctx.epochs + 16 * ctx.seq_len / ctx.epoch_tokens <= (0.5 if tag == "half" else 1.0):
            inputs, targets = next(stream)
            opt.zero_grad()
            F.cross_entropy(model(inputs).reshape(-1, model.vocab_size), targets.reshape(-1)).backward()
            opt.step()
        ctx.save_snapshot(model, tag)
    ctx.set_ensemble({"half": 0.5, "whole": 0.5})
'''


def test_a_real_run_re_evaluates_from_fetched_weights_as_from_included_ones(tmp_path, synthetic_data, capsys):
    from harness.run.runner import RunRequest, run_method

    method = tmp_path / "honest"
    method.mkdir()
    (method / "method.toml").write_text('[method]\nname = "honest"\nentry = "train:main"\ntracks = ["*"]\n')
    (method / "train.py").write_text(HONEST)
    run_dir = run_method(RunRequest(method_dir=method, track="synthetic", epochs=1.0, data_dir=synthetic_data,
                                    out=tmp_path / "run", progress=False))
    assert json.loads((run_dir / "record.json").read_text())["status"] == "ok"

    assert main(["submit", str(run_dir), "--out", str(tmp_path / "inside"), "--weights-up-to", "1GB"]) == 0
    assert main(["submit", str(run_dir), "--out", str(tmp_path / "outside"),
                 "--weights-to", (tmp_path / "bucket").as_uri()]) == 0
    filed = {}
    for name in ("inside", "outside"):
        assert main(["leaderboard", "add", str(tmp_path / name), "--records", str(tmp_path / f"records-{name}"),
                     "--verify", "--data", str(synthetic_data), "--fetch-to", str(tmp_path / "cache"), "--fetch-local", str(tmp_path)]) == 0, (
            capsys.readouterr().err)
        (path,) = (tmp_path / f"records-{name}").rglob("*.json")
        filed[name] = path.read_bytes()
    assert filed["outside"] == filed["inside"] and json.loads(filed["outside"])["verified"]["ok"]

    # the same weights, tampered with at their URL: the re-evaluation never runs and nothing is filed
    manifest = json.loads(next((tmp_path / "outside" / "runs").glob("*/snapshots.json")).read_text())
    entry = manifest[0]["remote"]["model.safetensors"]
    raw = bytearray(remote_bytes(entry["url"]))
    raw[-4:] = b"\0\0\0\1"
    write_remote(entry["url"], bytes(raw))
    assert main(["leaderboard", "add", str(tmp_path / "outside"), "--records", str(tmp_path / "records-again"),
                 "--verify", "--data", str(synthetic_data), "--fetch-to", str(tmp_path / "other-cache"), "--fetch-local", str(tmp_path)]) == 2
    assert entry["url"] in capsys.readouterr().err and not (tmp_path / "records-again").exists()
