"""leaderboard/storage.py: put a file at a URL, fetch it back sha256-checked, on file:// and memory://.

Both go through the same `put` and `fetch` that serve s3:// and hf://; the Hub cannot be reached from the
test machine, so its part is tested where it is pure: how a run's URL, branch and path are composed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import uuid
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from leaderboard import storage
from leaderboard.storage import StorageError, cache_path, fetch, join_url, parse_hub_url, put, run_url

PAYLOAD = bytes(range(256)) * 40  # 10,240 bytes: several chunks once CHUNK is made small


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()




@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(storage, "CHUNK", 1024)


def local_file(tmp_path: Path, data: bytes = PAYLOAD, name: str = "model.safetensors") -> Path:
    path = tmp_path / "local" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def remote_bytes(url: str) -> bytes:
    with fsspec.open(url, "rb") as handle:
        return handle.read()


def write_remote(url: str, data: bytes) -> None:
    with fsspec.open(url, "wb") as handle:
        handle.write(data)


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


class Meter:
    def __init__(self, fail_after: int | None = None):
        self.n, self.fail_after = 0, fail_after

    def update(self, n: int) -> None:
        self.n += n
        if self.fail_after is not None and self.n >= self.fail_after:
            raise RuntimeError("interrupted")


def test_put_then_fetch_gives_back_the_same_bytes(tmp_path, storage_base, small_chunks):
    url = join_url(storage_base, "m-0123456789ab", "run-s0", "s1", "model.safetensors")
    meter = Meter()
    stored = put(local_file(tmp_path), url, meter=meter)
    assert (stored.url, stored.sha256, stored.bytes, stored.skipped) == (url, "sha256:" + sha(PAYLOAD), 10_240, False)
    assert meter.n == 10_240 and remote_bytes(url) == PAYLOAD

    fetched = fetch(url, stored.sha256, tmp_path / "cache", size=10_240, local_roots=(tmp_path,))
    assert fetched == tmp_path / "cache" / "sha256" / sha(PAYLOAD)[:2] / sha(PAYLOAD)
    assert fetched.read_bytes() == PAYLOAD
    assert files_under(tmp_path / "cache") == [fetched]  # no temporary file left beside it


def test_an_identical_file_at_the_target_is_not_sent_again(tmp_path, storage_base, monkeypatch):
    url = join_url(storage_base, "run", "model.safetensors")
    first = put(local_file(tmp_path), url)
    said = []

    def no_upload(*args):
        raise AssertionError("the identical file was uploaded again")

    monkeypatch.setattr(storage, "_publish", no_upload)
    meter = Meter()
    again = put(local_file(tmp_path), url, meter=meter, say=said.append)
    assert again.skipped and (again.url, again.sha256, again.bytes) == (first.url, first.sha256, first.bytes)
    assert said == [f"{url}: already there with the same size and sha256, not sent again"]
    assert meter.n == 10_240  # counted as done, so the progress reaches its total


def test_a_different_file_of_the_same_size_is_replaced(tmp_path, storage_base):
    url = join_url(storage_base, "run", "model.safetensors")
    write_remote(url, b"\0" * len(PAYLOAD))  # e.g. what an earlier, different snapshot left there
    stored = put(local_file(tmp_path), url)
    assert not stored.skipped and remote_bytes(url) == PAYLOAD


def test_an_interrupted_upload_publishes_nothing(tmp_path, storage_base, small_chunks):
    url = join_url(storage_base, "run", "model.safetensors")
    with pytest.raises(StorageError, match="interrupted"):
        put(local_file(tmp_path), url, meter=Meter(fail_after=4096))  # raises after four chunks are written
    fs, path = fsspec.core.url_to_fs(storage_base)
    assert not fs.exists(join_url(storage_base, "run", "model.safetensors"))
    assert not fs.exists(storage_base) or fs.find(storage_base) == []  # no partial file under any name


def test_fetch_refuses_other_bytes_names_both_hashes_and_keeps_nothing(tmp_path, storage_base):
    url = join_url(storage_base, "run", "model.safetensors")
    stored = put(local_file(tmp_path), url)
    tampered = PAYLOAD[:-1] + b"\x00"  # PAYLOAD ends in 0xff
    write_remote(url, tampered)
    with pytest.raises(StorageError) as caught:
        fetch(url, stored.sha256, tmp_path / "cache", size=len(PAYLOAD), local_roots=(tmp_path,))
    message = str(caught.value)
    assert url in message and sha(PAYLOAD) in message and sha(tampered) in message
    assert files_under(tmp_path / "cache") == []


def test_a_file_of_another_size_than_stated_is_not_read(tmp_path, storage_base):
    url = join_url(storage_base, "run", "model.safetensors")
    write_remote(url, PAYLOAD + b"more")
    with pytest.raises(StorageError, match="10,244 bytes there, but the bundle states 10,240"):
        fetch(url, "sha256:" + sha(PAYLOAD), tmp_path / "cache", size=len(PAYLOAD), local_roots=(tmp_path,))
    assert files_under(tmp_path / "cache") == []


class SizelessFileSystem(MemoryFileSystem):
    """An in-memory store that, like some https servers, does not say how large a file is."""

    protocol = "sizeless"
    store: dict = {}
    pseudo_dirs = [""]

    def info(self, path, **kwargs):
        return {**super().info(path, **kwargs), "size": None}


def test_a_file_whose_size_is_not_known_is_read_no_further_than_the_stated_size(tmp_path, monkeypatch):
    fsspec.register_implementation("sizeless", SizelessFileSystem, clobber=True)
    monkeypatch.setattr(storage, "FETCH_PROTOCOLS", storage.FETCH_PROTOCOLS | {"sizeless"})
    url = f"sizeless://run-{uuid.uuid4().hex}/model.safetensors"
    write_remote(url, PAYLOAD + b"more")
    with pytest.raises(StorageError, match="longer than the 10,240 bytes"):
        fetch(url, "sha256:" + sha(PAYLOAD), tmp_path / "cache", size=len(PAYLOAD), local_roots=(tmp_path,))
    assert files_under(tmp_path / "cache") == []


def test_a_cached_file_is_not_fetched_again_but_a_damaged_one_is(tmp_path, storage_base):
    url = join_url(storage_base, "run", "model.safetensors")
    stored = put(local_file(tmp_path), url)
    cached = fetch(url, stored.sha256, tmp_path / "cache", local_roots=(tmp_path,))
    fs, path = fsspec.core.url_to_fs(url)
    fs.rm(path)  # the URL is gone: only the cache can answer now
    assert fetch(url, stored.sha256, tmp_path / "cache", local_roots=(tmp_path,)) == cached and cached.read_bytes() == PAYLOAD

    cached.write_bytes(b"damaged")
    with pytest.raises(StorageError, match="cannot fetch"):  # hashed, found wrong, and fetched (from nowhere)
        fetch(url, stored.sha256, tmp_path / "cache", local_roots=(tmp_path,))
    assert files_under(tmp_path / "cache") == []


def test_an_unreachable_url_is_refused_by_name(tmp_path, storage_base):
    url = join_url(storage_base, "nothing", "here.safetensors")
    with pytest.raises(StorageError, match=f"^{re.escape(url)}: cannot fetch it"):
        fetch(url, "sha256:" + sha(PAYLOAD), tmp_path / "cache", local_roots=(tmp_path,))
    assert files_under(tmp_path / "cache") == []


class FlakyFileSystem(MemoryFileSystem):
    """An in-memory store whose files break partway through a read, as a dropped connection would."""

    protocol = "flaky"
    store: dict = {}
    pseudo_dirs = [""]
    break_after = 3000

    def _open(self, path, mode="rb", **kwargs):
        handle = super()._open(path, mode, **kwargs)
        return Breaking(handle, self.break_after) if "r" in mode else handle


class Breaking:
    def __init__(self, handle, after: int):
        self.handle, self.left = handle, after

    def read(self, n=-1):
        if self.left <= 0:
            raise ConnectionResetError("connection reset by peer")
        block = self.handle.read(n if n >= 0 and n <= self.left else self.left)
        self.left -= len(block)
        return block

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_an_interrupted_fetch_leaves_no_file_that_looks_complete(tmp_path, small_chunks, monkeypatch):
    fsspec.register_implementation("flaky", FlakyFileSystem, clobber=True)
    monkeypatch.setattr(storage, "FETCH_PROTOCOLS", storage.FETCH_PROTOCOLS | {"flaky"})
    url = f"flaky://run-{uuid.uuid4().hex}/model.safetensors"
    write_remote(url, PAYLOAD)
    cache = tmp_path / "cache"
    with pytest.raises(StorageError, match="ConnectionResetError"):
        fetch(url, "sha256:" + sha(PAYLOAD), cache, size=len(PAYLOAD), local_roots=(tmp_path,))
    assert files_under(cache) == []  # neither the target nor the temporary file it was being written to
    assert not cache_path(cache, sha(PAYLOAD)).exists()


def test_a_plain_folder_is_a_file_url(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.normalize_url("weights") == f"file://{tmp_path.resolve()}/weights"
    assert storage.normalize_url("s3://bucket/prefix") == "s3://bucket/prefix"
    assert join_url("memory://", "a", "b/") == "memory://a/b"
    assert join_url("s3://bucket/prefix/", "a") == "s3://bucket/prefix/a"


def test_a_missing_backend_names_the_extra_to_install(tmp_path):
    if importlib.util.find_spec("s3fs") is not None:
        pytest.skip("s3fs is installed here, so an s3:// URL would open")
    with pytest.raises(StorageError, match=r"pip install 'slowrun\[storage\]'"):
        put(local_file(tmp_path), "s3://bucket/run/model.safetensors")


# --- the Hub: a branch per run, composed without asking the Hub ---------------------------------------

def test_each_run_gets_its_own_branch_on_the_hub():
    storage_base = "hf://datasets/alice/slowrun-weights"
    here = run_url(storage_base, "my_method-0123456789ab", "my-method-s0")
    assert here == ("hf://datasets/alice/slowrun-weights@my_method-0123456789ab-my-method-s0"
                    "/my_method-0123456789ab/my-method-s0")
    assert join_url(here, "s3", "model.safetensors") == (
        "hf://datasets/alice/slowrun-weights@my_method-0123456789ab-my-method-s0"
        "/my_method-0123456789ab/my-method-s0/s3/model.safetensors")
    assert run_url("hf://alice/weights/pr90/", "q0-aaaaaaaaaaaa", "run.2") == (
        "hf://alice/weights@q0-aaaaaaaaaaaa-run_2/pr90/q0-aaaaaaaaaaaa/run.2")
    assert run_url("hf://spaces/alice/w", "m", "r") == "hf://spaces/alice/w@m-r/m/r"


def test_a_hub_url_splits_into_repository_branch_and_path():
    location = parse_hub_url("hf://datasets/alice/w@q0-aaaaaaaaaaaa-run_2/pr90/q0-aaaaaaaaaaaa/run.2/s0/graph.json")
    assert (location.repo_type, location.repo_id, location.revision, location.path) == (
        "dataset", "alice/w", "q0-aaaaaaaaaaaa-run_2", "pr90/q0-aaaaaaaaaaaa/run.2/s0/graph.json")
    assert parse_hub_url("hf://alice/w") == storage.HubLocation("model", "alice/w", None, "")
    assert parse_hub_url("hf://models/alice/w/x").url == "hf://alice/w/x"


def test_huggingface_hub_reads_the_composed_url_the_same_way():
    """The library that opens the URL (HfFileSystem) must see the same repository, branch and path."""
    try:
        from huggingface_hub.utils import parse_hf_uri
    except ImportError:
        pytest.skip("this huggingface_hub has no parse_hf_uri")
    url = "hf://datasets/alice/slowrun-weights@my_method-0123456789ab-my-method-s0/my_method-0123456789ab/x/s0/model.safetensors"
    parsed = parse_hf_uri(url)
    assert (parsed.type, parsed.id, parsed.revision, parsed.path_in_repo) == (
        "dataset", "alice/slowrun-weights", "my_method-0123456789ab-my-method-s0",
        "my_method-0123456789ab/x/s0/model.safetensors")


@pytest.mark.parametrize("url, complaint", [
    ("hf://datasets/alice/w@main", "leave the revision out"),
    ("hf://alice", "name the repository"),
    ("hf://datasets/alice", "name the repository"),
])
def test_a_hub_url_without_a_repository_or_with_a_revision_is_refused(url, complaint):
    with pytest.raises(StorageError, match=complaint):
        run_url(url, "m", "r")


@pytest.mark.parametrize("url", ["http://10.0.0.1/weights", "ftp://host/w", "ssh://host/w",
                                 "zip://model.safetensors::memory://bundle.zip", "sftp://host/w"])
def test_a_fetch_from_a_protocol_a_submission_has_no_use_for_is_refused_before_anything_opens(url, tmp_path):
    with pytest.raises(StorageError, match="fetched only from"):
        fetch(url, "sha256:" + "0" * 64, tmp_path / "cache", local_roots=(tmp_path,))
    assert not (tmp_path / "cache").exists()


class FakeHub:
    """The Hub as far as put_many uses it: branches, path infos with LFS sha256, commits of many files."""

    def __init__(self):
        self.files: dict[tuple[str, str], bytes] = {}  # (branch, path) -> bytes
        self.branches: list[str] = []
        self.commits: list[tuple[str, list[str]]] = []

    def create_branch(self, repo_id, *, branch, repo_type, exist_ok):
        assert (repo_id, repo_type, exist_ok) == ("alice/w", "dataset", True)
        self.branches.append(branch)

    def get_paths_info(self, repo_id, paths, *, repo_type, revision, expand):
        from types import SimpleNamespace

        return [SimpleNamespace(path=path, size=len(self.files[(revision, path)]),
                                lfs=SimpleNamespace(sha256=hashlib.sha256(self.files[(revision, path)]).hexdigest()))
                for path in paths if (revision, path) in self.files]

    def create_commit(self, repo_id, *, repo_type, revision, operations, commit_message):
        for op in operations:
            self.files[(revision, op.path_in_repo)] = Path(op.path_or_fileobj).read_bytes()
        self.commits.append((revision, [op.path_in_repo for op in operations]))


def test_a_runs_files_go_to_the_hub_in_a_few_commits_to_its_branch_and_identical_ones_are_left(tmp_path,
                                                                                               monkeypatch):
    pytest.importorskip("huggingface_hub")
    hub = FakeHub()
    monkeypatch.setattr(storage, "_hub_api", lambda: hub)
    here = run_url("hf://datasets/alice/w", "q0-aaaaaaaaaaaa", "s0")
    items = []
    for n in range(storage.HUB_FILES_PER_COMMIT + 6):  # one full commit and a partial one
        local = tmp_path / f"f{n}.bin"
        local.write_bytes(bytes([n]) * (n + 1))
        items.append((local, join_url(here, f"t{n:03d}", "model.safetensors")))
    stored = storage.put_many(items)
    assert hub.branches == ["q0-aaaaaaaaaaaa-s0"]
    assert [len(paths) for _, paths in hub.commits] == [storage.HUB_FILES_PER_COMMIT, 6]  # not one commit a file
    assert {branch for branch, _ in hub.commits} == {"q0-aaaaaaaaaaaa-s0"}
    assert [s.sha256 for s in stored] == ["sha256:" + sha(local.read_bytes()) for local, _ in items]
    assert hub.files[("q0-aaaaaaaaaaaa-s0", "q0-aaaaaaaaaaaa/s0/t003/model.safetensors")] == bytes([3]) * 4

    items[5][0].write_bytes(b"changed")  # the same command again after one file changed
    again = storage.put_many(items)
    assert hub.commits[-1] == ("q0-aaaaaaaaaaaa-s0", ["q0-aaaaaaaaaaaa/s0/t005/model.safetensors"])
    assert sum(not s.skipped for s in again) == 1 and again[5].sha256 == "sha256:" + sha(b"changed")
