"""A submitter's bundle against `leaderboard add --verify`'s fetch and the bundle reader.

Each test performs one attack a bundle's author can make (docs/threat-model.md, "A submitter's weight URLs
reach only storage"; "A bundle vouches for what it files") and asserts that it is refused before anything is
read or filed."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

pytest.importorskip("fsspec")

from harness.errors import LeaderboardError  # noqa: E402
from leaderboard.bundle import create_bundle, read_bundle  # noqa: E402
from leaderboard.storage import StorageError, fetch  # noqa: E402


@pytest.fixture(autouse=True)
def needs_landlock():
    """(tests/trust's autouse fixture skips without Landlock; nothing here runs a method)"""


class _ReadTooMuch(BaseException):
    """Raised by the meter to stop a fetch that is filling the disk (not an Exception: fetch must not wrap it)."""


class _Meter:
    def __init__(self, stop_after: int):
        self.seen, self.stop_after = 0, stop_after

    def update(self, n: int) -> None:
        self.seen += n
        if self.seen > self.stop_after:
            raise _ReadTooMuch(self.seen)


@pytest.mark.parametrize("stated", [10**15, 4096], ids=["past-the-cap", "a-plausible-size"])
def test_a_device_file_is_refused_before_it_is_read(stated, tmp_path):
    """file:///dev/zero never ends: bounded only by the size the bundle states, it filled the verifier's disk."""
    meter = _Meter(8 << 20)
    with pytest.raises(StorageError, match="more than|not a regular file|not a file"):
        fetch("file:///dev/zero", "sha256:" + "0" * 64, tmp_path / "cache", size=stated, meter=meter,
              local_roots=("/dev",))  # even from a folder the verifier allowed
    assert meter.seen == 0


def test_a_fifo_is_refused_before_it_is_opened(tmp_path):
    """Opening a FIFO for reading waits for a writer that never comes: `--verify` would hang for ever."""
    fifo = tmp_path / "weights.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(StorageError, match="not a regular file|not a file"):
        fetch(fifo.as_uri(), "sha256:" + "0" * 64, tmp_path / "cache", size=4096, local_roots=(tmp_path,))


def test_a_file_of_another_size_than_stated_is_refused_before_it_is_read(tmp_path):
    weights = tmp_path / "weights.safetensors"
    weights.write_bytes(b"x" * 5000)
    meter = _Meter(1 << 30)
    with pytest.raises(StorageError, match="5,000 bytes there, but the bundle states 4,096"):
        fetch(weights.as_uri(), "sha256:" + hashlib.sha256(b"x" * 5000).hexdigest(), tmp_path / "cache", size=4096,
              meter=meter, local_roots=(tmp_path,))
    assert meter.seen == 0 and not any((tmp_path / "cache").rglob("*.safetensors"))


@pytest.mark.parametrize("where", ["outside", "through-a-link"])
def test_a_file_of_the_verifiers_outside_the_named_folders_is_refused_unread(where, tmp_path):
    """A bundle's file:// URL names a file on the verifier's machine. Outside the shared folders the verifier
    named, its refusal must tell the bundle's author nothing: not whether it exists, its size or its sha256."""
    secret = tmp_path / "home" / "secret.txt"
    secret.parent.mkdir()
    secret.write_bytes(b"hunter2")
    shared = tmp_path / "shared"
    shared.mkdir()
    url = secret.as_uri()
    if where == "through-a-link":
        os.symlink(secret, shared / "weights.safetensors")
        url = (shared / "weights.safetensors").as_uri()
    meter = _Meter(1 << 30)
    with pytest.raises(StorageError, match="outside the folders weights may be fetched from") as caught:
        fetch(url, "sha256:" + "0" * 64, tmp_path / "cache", size=4096, meter=meter, local_roots=(shared,))
    message = str(caught.value)
    assert hashlib.sha256(b"hunter2").hexdigest() not in message and "7 bytes" not in message and meter.seen == 0


def test_a_path_written_outside_the_named_folders_is_refused_unresolved(tmp_path, monkeypatch):
    """Resolving `/net/10.0.0.1/w` would make an automounter connect to 10.0.0.1: a path not even written
    under a named folder is refused before anything on its way is looked up; one written inside is resolved
    (a link there could lead out)."""
    shared = tmp_path / "shared"
    shared.mkdir()
    resolved = []
    real = os.path.realpath
    monkeypatch.setattr(os.path, "realpath", lambda p, **kw: resolved.append(str(p)) or real(p, **kw))
    for url in ("file:///net/10.0.0.1/weights.safetensors", (shared / ".." / "elsewhere" / "w").as_uri()):
        with pytest.raises(StorageError, match="outside the folders weights may be fetched from"):
            fetch(url, "sha256:" + "0" * 64, tmp_path / "cache", size=4096, local_roots=(shared,))
    assert not any("/net/" in p or "elsewhere" in p for p in resolved), resolved
    (shared / "w").write_bytes(b"x")
    with pytest.raises(StorageError, match="sha256"):
        fetch((shared / "w").as_uri(), "sha256:" + "0" * 64, tmp_path / "cache", size=1, local_roots=(shared,))
    assert str(shared / "w") in resolved


def test_a_data_url_is_not_a_storage_url(tmp_path):
    payload = b"weights inline in the URL"
    with pytest.raises(StorageError, match="fetched only from"):
        fetch("data:," + payload.decode(), "sha256:" + hashlib.sha256(payload).hexdigest(), tmp_path / "cache")


def _bundle_with_a_run_outside(tmp_path: Path) -> tuple[Path, Path]:
    from tests.leaderboard.test_bundle import make_run

    method = tmp_path / "my_method"
    method.mkdir()
    (method / "method.toml").write_text('name = "my_method"\nentry = "train:main"\n')
    (method / "train.py").write_text("def main(ctx):\n    pass\n")
    runs = [make_run(tmp_path / "runs", method, seed, 3.01 + 0.001 * seed) for seed in range(2)]
    bundle = create_bundle(runs[:1], tmp_path / "bundle", weights_up_to=10**9).root
    return bundle, runs[1]


@pytest.mark.parametrize("folder", ["elsewhere", "../runs/x", "method"], ids=["absolute", "dot-dot", "not-a-run"])
def test_a_bundles_run_folder_outside_the_bundle_is_refused(folder, tmp_path):
    """bundle.json itself is not hashed: a run folder it names outside the bundle (or one whose record the
    manifest does not cover) would file a record, and verify snapshots, that nothing in the bundle vouches for."""
    bundle, elsewhere = _bundle_with_a_run_outside(tmp_path)
    manifest = json.loads((bundle / "bundle.json").read_text())
    manifest["runs"][0]["folder"] = str(elsewhere) if folder == "elsewhere" else folder
    (bundle / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(LeaderboardError, match=r"runs\[0\]\.folder: .* is not a run folder of this bundle"):
        read_bundle(bundle)


def test_a_link_in_a_bundle_is_refused(tmp_path):
    """A folder that is a link is neither listed nor followed by the manifest check, but later readers of
    the bundle (the fetched-weights view, reverify's snapshot links) follow it."""
    bundle, elsewhere = _bundle_with_a_run_outside(tmp_path)
    run = next(p for p in (bundle / "runs").iterdir())
    os.symlink(elsewhere / "snapshots", run / "more-snapshots")
    with pytest.raises(LeaderboardError, match="more-snapshots: a symbolic link"):
        read_bundle(bundle)
