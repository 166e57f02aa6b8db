"""Snapshot files at a URL: put a local file there, fetch one back into a local cache, sha256 checked.

PR #90's 480 snapshots weigh about 1.8 TB, more than a bundle (a folder in a pull request) can carry, so
`slowrun submit --weights-to URL` puts the weights somewhere else and the bundle names each file by URL and
sha256; `slowrun leaderboard add BUNDLE --verify` fetches them back before re-evaluating. The URL is any
fsspec URL: `s3://bucket/prefix` (s3fs), `hf://datasets/owner/name` (huggingface_hub), `file:///shared/disk`
or a plain folder, `memory://` in the tests. Every one goes through `put` and `fetch` below; the
backends differ only in how a written file is published whole (`_publish`).

Both directions stream in chunks (a snapshot is gigabytes) and hash while they copy, so each file is read
once. The sha256 the bundle records is the one computed on the bytes sent, and the one a fetch checks is
computed on the bytes received, so nothing between the two (a bucket, a cache, a mirror) has to be trusted.

Both are idempotent, because a 1.8 TB upload will be interrupted and run again: a target that already
holds a file of the same size and sha256 is not sent again, and a cached file with the right sha256 is not
fetched again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sys
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Sequence
from urllib.parse import unquote

from harness.common.atomic import atomic_output
from harness.errors import LeaderboardError
from harness.formats.snapshots import MAX_SNAPSHOT_BYTES
from leaderboard.public_http import public_client, refusal_in

CHUNK = 8 << 20  # bytes per read: large enough that per-call overhead vanishes, small enough to stream
# What `leaderboard add --verify` fetches from: the URLs are the submitter's, and fsspec opens anything it has
# a driver for (plain http on an internal host, ssh, ftp, a zip inside another URL). Object stores, the Hub,
# https, a shared disk and the in-memory store of the tests are enough for a submission.
FETCH_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "hf", "https", "file", "memory"})
# The most a fetched file may hold: what a snapshot's file may hold at all, so a bundle cannot state a size that
# turns the verifier's cache into a sink.
MAX_FETCH_BYTES = MAX_SNAPSHOT_BYTES
STORAGE_EXTRA = "pip install 'slowrun[storage]'"
_HEX = re.compile(r"^[0-9a-f]{64}$")
_BRANCH_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_HUB_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_HUB_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}

Say = Callable[[str], None]


class StorageError(LeaderboardError):
    """A file could not be put or fetched, or arrived with other bytes than the bundle names."""


@dataclass(frozen=True)
class Stored:
    """A file as it is at its URL: what the bundle records for it."""

    url: str
    sha256: str  # "sha256:<hex>", the bundle's form
    bytes: int
    skipped: bool = False  # already there with the same size and sha256: nothing was sent


def default_cache_dir() -> Path:
    """Where fetched files are kept between `leaderboard add --verify` calls: the user's cache, so a second
    verification of a 1.8 TB submission (after a fix to something else) does not download it again."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "slowrun" / "weights"


# --- URLs --------------------------------------------------------------------------------------------

def normalize_url(url: str) -> str:
    """A plain path as an absolute `file://` URL: a bundle read on another machine, or from another folder,
    must not resolve a relative path against wherever it happens to be."""
    url = str(url).strip()
    if not url:
        raise StorageError("--weights-to needs a URL such as s3://bucket/prefix, hf://datasets/owner/name or a folder")
    if "://" not in url:
        return "file://" + Path(url).expanduser().resolve().as_posix()
    return url


def join_url(base: str, *parts: str) -> str:
    """`base/part/part`: string joining, because `memory://` and `hf://` are not paths to os.path."""
    head = base if base.endswith("://") else base.rstrip("/") + "/"
    return head + "/".join(part.strip("/") for part in parts if part.strip("/"))


@dataclass(frozen=True)
class HubLocation:
    """A place in a Hugging Face repository, as HfFileSystem spells it:
    `hf://[datasets/|spaces/]OWNER/NAME[@REVISION][/PATH]`."""

    repo_type: str  # model, dataset or space
    repo_id: str  # OWNER/NAME
    revision: str | None
    path: str  # inside the repository, no leading slash

    @property
    def url(self) -> str:
        revision = f"@{self.revision}" if self.revision else ""
        return f"hf://{_HUB_PREFIXES[self.repo_type]}{self.repo_id}{revision}" + (f"/{self.path}" if self.path else "")


def parse_hub_url(url: str) -> HubLocation:
    """Split an `hf://` URL without asking the Hub (HfFileSystem.resolve_path would): the composition is
    tested here, where the Hub cannot be reached, and a typo is refused before anything is uploaded."""
    if not url.startswith("hf://"):
        raise StorageError(f"{url}: not an hf:// URL")
    parts = [p for p in url[len("hf://"):].split("/") if p]
    repo_type = _HUB_TYPES.get(parts[0], "model") if parts else "model"
    if parts and parts[0] in _HUB_TYPES:
        parts = parts[1:]
    if len(parts) < 2:
        raise StorageError(f"{url}: name the repository as hf://[datasets/]OWNER/NAME[/FOLDER] (create it on the Hub "
                           "first: the harness does not create repositories)")
    name, _, revision = parts[1].partition("@")
    if not parts[0] or not name or "@" in parts[0]:
        raise StorageError(f"{url}: name the repository as hf://[datasets/]OWNER/NAME[/FOLDER]")
    return HubLocation(repo_type, f"{parts[0]}/{name}", unquote(revision) or None, "/".join(parts[2:]))


def hub_branch(method: str, run: str) -> str:
    """One branch per run: a run's files are one ref, which can be listed, pinned or deleted without touching
    the other runs', and two runs submitted at once never commit to the same branch head. Only letters,
    digits, `_` and `-`, so the name never needs quoting in a URL and is always a valid git ref."""
    return _BRANCH_UNSAFE.sub("_", f"{method}-{run}").strip("_-") or "_"


def run_url(base: str, method: str, run: str) -> str:
    """Where one run's files go under BASE: BASE/METHOD/RUN, and on the Hub in the run's own branch (the same
    folders inside it, so a file's path says whose it is wherever it is downloaded to)."""
    base = normalize_url(base)
    if not base.startswith("hf://"):
        return join_url(base, method, run)
    location = parse_hub_url(base)
    if location.revision:
        raise StorageError(f"{base}: leave the revision out; each run is uploaded to a branch of its own "
                           f"(here {hub_branch(method, run)!r})")
    return replace(location, revision=hub_branch(method, run), path=join_url(location.path, method, run).lstrip("/")).url


# --- put -----------------------------------------------------------------------------------------------

def put(local: str | Path, url: str, *, meter: Any = None, say: Say | None = None) -> Stored:
    """Make `url` hold the bytes of the local file; return its URL, sha256 and size as the bundle records them.

    A target already holding a file of the same size is hashed (the Hub states an LFS file's sha256; other
    stores are read back): the same sha256 means it is not sent again, anything else is replaced. `meter`
    (`update(bytes)`) is told of every byte sent or found already there; `say` of every skipped file.
    """
    local, url = Path(local), normalize_url(url)
    if url.startswith("hf://"):
        return put_many([(local, url)], meter=meter, say=say)[0]
    size = local.stat().st_size
    fs, path = _filesystem(url)
    with _storage_errors(url, "check"):
        there = _size_at(fs, path)
    if there == size:
        digest = _sha256_local(local)
        with _storage_errors(url, "hash"):
            remote = _sha256_at(fs, path)
        if remote == digest:
            if say is not None:
                say(f"{url}: already there with the same size and sha256, not sent again")
            _update(meter, size)
            return Stored(url, "sha256:" + digest, size, skipped=True)
    with _storage_errors(url, "upload to"):
        digest = _publish(fs, path, url, local, meter)
        there = _size_at(fs, path)
    if there != size:  # cheap, and catches a backend that published a short object without raising
        raise StorageError(f"{url}: holds {there} bytes after the upload, {local} has {size}; run the upload again")
    return Stored(url, "sha256:" + digest, size)


def _publish(fs, path: str, url: str, local: Path, meter: Any) -> str:
    """Write the file so that the target holds the whole new file or what it held before, never a part.

    Each backend has its own way to make that true, and this is the only place where they differ (the Hub
    is `put_many`'s: a commit is its transaction):
    - a local folder: a temporary file beside the target, renamed over it (fsspec's own transaction stages
      in the system temporary folder, which may be a small tmpfs on another disk, and then copies);
    - anything else (S3, memory, GCS, Azure): an fsspec transaction, whose files publish on commit only (an
      S3 multipart upload is completed on commit and aborted on discard).
    """
    from fsspec.implementations.local import LocalFileSystem

    with open(local, "rb") as source:
        if isinstance(fs, LocalFileSystem):
            folder, name = path.rsplit("/", 1)
            fs.makedirs(folder, exist_ok=True)
            partial = f"{folder}/.{name}.{uuid.uuid4().hex}.partial"  # hidden: never taken for the file itself
            try:
                with fs.open(partial, "wb") as out:
                    digest = _copy(source, out, meter)
                fs.mv(partial, path)
            finally:
                if fs.exists(partial):
                    fs.rm(partial)
            return digest
        with fs.transaction:  # discarded, not committed, when the copy raises
            with fs.open(path, "wb") as out:
                return _copy(source, out, meter)


HUB_FILES_PER_COMMIT = 64  # files in one Hub commit: a failed commit is redone whole, and the Hub limits commits an hour


def put_many(items: list[tuple[str | Path, str]], *, meter: Any = None, say: Say | None = None) -> list[Stored]:
    """`put` for many files, in order. On the Hub a run's files go up in a few commits to its branch instead
    of one commit each: PR #90's 480 snapshots are 1,440 files, and the Hub rate-limits commits (a commit
    is also the Hub's only transaction: its files appear together or not at all). Elsewhere each file is
    put on its own (an object store has no commits to save)."""
    stored: dict[int, Stored] = {}
    hub: dict[tuple[str, str, str | None], list[tuple[int, Path, HubLocation, str]]] = {}
    for index, (local, url) in enumerate(items):
        url = normalize_url(url)
        if url.startswith("hf://"):
            location = parse_hub_url(url)
            hub.setdefault((location.repo_type, location.repo_id, location.revision), []).append(
                (index, Path(local), location, url))
        else:
            stored[index] = put(local, url, meter=meter, say=say)
    for (repo_type, repo_id, revision), files in hub.items():
        with _storage_errors(files[0][3], "upload to"):
            stored.update(_hub_put(repo_type, repo_id, revision, files, meter, say))
    return [stored[index] for index in range(len(items))]


def _hub_api():
    """The Hub's client (a seam: the tests, which cannot reach the Hub, give a stand-in)."""
    from huggingface_hub import HfApi

    return HfApi()


def _hub_put(repo_type: str, repo_id: str, revision: str | None, files, meter, say) -> dict[int, Stored]:
    """One branch's files: the branch made, the files already there with the same size and LFS sha256 left,
    the others committed HUB_FILES_PER_COMMIT at a time, and their sizes checked after."""
    from huggingface_hub import CommitOperationAdd

    api = _hub_api()
    if revision:
        api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
    paths = [location.path for _, _, location, _ in files]
    there = {info.path: info for info in api.get_paths_info(repo_id, paths, repo_type=repo_type, revision=revision,
                                                            expand=True)}
    done: dict[int, Stored] = {}
    to_send = []
    for index, local, location, url in files:
        digest, size = _sha256_local(local), local.stat().st_size
        info = there.get(location.path)
        lfs = getattr(info, "lfs", None)
        # the LFS pointer's sha256 is the Hub's word on the content; a file without one is sent again
        if info is not None and getattr(info, "size", None) == size and getattr(lfs, "sha256", None) == digest:
            if say is not None:
                say(f"{url}: already there with the same size and sha256, not sent again")
            _update(meter, size)
            done[index] = Stored(url, "sha256:" + digest, size, skipped=True)
        else:
            to_send.append((index, local, location, url, digest, size))
    for start in range(0, len(to_send), HUB_FILES_PER_COMMIT):
        batch = to_send[start:start + HUB_FILES_PER_COMMIT]
        api.create_commit(repo_id, repo_type=repo_type, revision=revision,
                          operations=[CommitOperationAdd(path_in_repo=location.path, path_or_fileobj=str(local))
                                      for _, local, location, _, _, _ in batch],
                          commit_message=f"slowrun submit: {len(batch)} file(s) of {revision or repo_id}")
        for index, _, _, url, digest, size in batch:
            _update(meter, size)
            done[index] = Stored(url, "sha256:" + digest, size)
    if to_send:  # cheap, and catches a commit the Hub took without all of its files
        sent = {info.path: info for info in api.get_paths_info(
            repo_id, [location.path for _, _, location, _, _, _ in to_send], repo_type=repo_type, revision=revision,
            expand=True)}
        short = [url for _, _, location, url, _, size in to_send
                 if getattr(sent.get(location.path), "size", None) != size]
        if short:
            raise StorageError(f"{short[0]}: not on the Hub with its size after the commit ({len(short)} file(s)); "
                               "run the upload again")
    return done


# --- fetch ---------------------------------------------------------------------------------------------

def cache_path(cache_dir: str | Path, sha256: str) -> Path:
    """Where a file with this sha256 lives in the cache: named by content, so two URLs of one file are one
    download, and no name a bundle chose (a URL's path could hold `..`) ever becomes a path here."""
    digest = _hex(sha256)
    return Path(cache_dir) / "sha256" / digest[:2] / digest


def fetch(url: str, sha256: str, cache_dir: str | Path, *, size: int | None = None, meter: Any = None,
          say: Say | None = None, local_roots: Sequence[str | Path] = ()) -> Path:
    """The file at `url`, in the cache, with its sha256 checked; refused (StorageError) when it differs.

    A file already in the cache is hashed again rather than trusted by its name (the cache is a folder
    anyone with the account can write to) and kept when it matches. The download goes to a hidden
    temporary file beside its place and is renamed there only once its sha256 matched: an interrupted or
    refused fetch leaves nothing that looks like a fetched file. `size`, when given, bounds what is read,
    so a URL that serves without end cannot fill the disk.

    A `file://` URL names a file on the verifier's own machine, chosen by whoever wrote the bundle: it is
    fetched only from inside one of `local_roots` (a shared folder the verifier names, `--fetch-local`).
    Anywhere else, the refusal (its size, its sha256) would tell the bundle's author about the verifier's
    files, whoever reads the verification's output.
    """
    digest = _hex(sha256)
    if size is not None and not 0 <= size <= MAX_FETCH_BYTES:
        raise StorageError(f"{url}: the bundle states {size:,} bytes, more than the {MAX_FETCH_BYTES:,} a snapshot "
                           "file may have; nothing was fetched")
    target = cache_path(cache_dir, sha256)
    if target.is_file():
        if _sha256_local(target) == digest:
            _update(meter, target.stat().st_size)
            return target
        target.unlink()  # damaged in the cache: fetched again below
    fs, path = _fetch_filesystem(url)
    if _protocols(fs) & {"file", "local"}:
        _check_local_root(path, url, local_roots)
    with _storage_errors(url, "fetch"):
        _check_fetchable(fs, path, url, size)
        with atomic_output(target, "wb") as out:  # renamed into place only when the block ends without error
            with fs.open(path, "rb") as source:
                got = _copy(source, out, meter, limit=size, url=url)
            if got != digest:
                raise StorageError(f"{url}: sha256 {got}, but the bundle names {digest}; the file there is not the "
                                   "one that was submitted, so nothing was kept")
    if say is not None:
        say(f"{url}: fetched into {target}")
    return target


# --- shared mechanics ----------------------------------------------------------------------------------

def _copy(source: BinaryIO, out: BinaryIO, meter: Any, *, limit: int | None = None, url: str = "") -> str:
    """Copy in chunks, hashing what passes; the hex sha256 of exactly the bytes copied."""
    digest, total = hashlib.sha256(), 0
    while True:
        block = source.read(CHUNK if limit is None else min(CHUNK, limit - total + 1))
        if not block:
            return digest.hexdigest()
        total += len(block)
        if limit is not None and total > limit:
            raise StorageError(f"{url}: longer than the {limit:,} bytes the bundle states; not the submitted file")
        digest.update(block)
        out.write(block)
        _update(meter, len(block))


def _sha256_local(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _sha256_at(fs, path: str) -> str:
    lfs = (fs.info(path) or {}).get("lfs")
    stated = lfs.get("sha256") if isinstance(lfs, dict) else None
    if isinstance(stated, str) and _HEX.match(stated):
        return stated  # the Hub's own hash of an LFS file: no download to learn it
    digest = hashlib.sha256()
    with fs.open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _size_at(fs, path: str) -> int | None:
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return None
    return int(info["size"]) if info.get("type") == "file" else None


def _fetch_filesystem(url: str):
    """The file system of a URL a submitter gave, refused unless it is one of FETCH_PROTOCOLS as fsspec itself
    resolves it. The scheme is read from the same parse that opens the URL: a check on the text alone
    misreads forms fsspec knows and the text does not show (`data:,…` has no `://`; `a::b` chains one file
    system inside another; a caching layer wraps the one it names)."""
    scheme, sep, _ = url.partition("://")
    if not sep or "::" in url or scheme.lower() not in FETCH_PROTOCOLS or scheme != scheme.strip():
        raise StorageError(f"{url}: weights are fetched only from {', '.join(sorted(FETCH_PROTOCOLS))} URLs "
                           "(scheme://…); ask the submitter to upload them to one of those")
    # https reaches hosts the submitter chose: every connection (redirects and DNS answers included) must
    # go to a public address, never into the verifier's own network (leaderboard/public_http.py).
    options = {"get_client": public_client} if scheme.lower() in ("http", "https") else {}
    fs, path = _filesystem(url, **options)
    if not _protocols(fs) & FETCH_PROTOCOLS or "cach" in type(fs).__name__.lower():
        raise StorageError(f"{url}: fsspec opens it as {type(fs).__name__}, which is not one of the storage "
                           f"back-ends weights are fetched from ({', '.join(sorted(FETCH_PROTOCOLS))})")
    return fs, path


def _check_local_root(path: str, url: str, local_roots: Sequence[str | Path]) -> None:
    """Refuse a local path outside every root the verifier named (links resolved first, so a link inside a
    root cannot lead out of it). A path not even written under a root is refused before it is resolved:
    resolving touches every folder on the way, and on an automounter (`/net/10.0.0.1/...`) that alone is a
    connection to a host the bundle's author chose."""
    written = Path(os.path.normpath(os.path.abspath(path)))
    written_inside = any(written.is_relative_to(os.path.abspath(root)) or written.is_relative_to(os.path.realpath(root))
                         for root in local_roots)
    if not written_inside or not any(Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root))
                                     for root in local_roots):
        named = ", ".join(str(root) for root in local_roots) or "none named"
        raise StorageError(f"{url}: a file on this machine outside the folders weights may be fetched from ({named}); "
                           "if the submitter's weights really are on a shared disk here, name its folder with "
                           "--fetch-local DIR")


def _check_fetchable(fs, path: str, url: str, size: int | None) -> None:
    """Refuse, before a byte is read, what cannot be the submitted file: something other than a regular file
    (a device such as /dev/zero never ends, a FIFO never answers) or a file of another size than the bundle
    states. Back-ends that do not know a size (some https servers) are still bounded by `size` as they
    are read."""
    info = fs.info(path)
    kind = info.get("type")
    if kind not in ("file", None):
        raise StorageError(f"{url}: a {kind}, not a file; the bundle must name the uploaded file itself")
    if _protocols(fs) & {"file", "local"}:
        import stat

        if not stat.S_ISREG(os.stat(path).st_mode):
            raise StorageError(f"{url}: not a regular file; the bundle must name the uploaded file itself")
    stated = info.get("size")
    if size is not None and stated is not None and int(stated) != size:
        raise StorageError(f"{url}: {int(stated):,} bytes there, but the bundle states {size:,}; not the submitted "
                           "file, so nothing was fetched")


def _filesystem(url: str, **options):
    import fsspec.core

    try:
        return fsspec.core.url_to_fs(url, **options)
    except ImportError as exc:
        raise StorageError(f"{url}: {exc}; the storage backends are optional: {STORAGE_EXTRA}") from exc
    except Exception as exc:
        raise StorageError(f"{url}: not a URL fsspec can open ({type(exc).__name__}: {exc})") from exc


@contextlib.contextmanager
def _storage_errors(url: str, doing: str) -> Iterator[None]:
    """Every backend's failure as one refusal naming the URL: s3fs, huggingface_hub and fsspec raise their
    own exception classes (some not OSError), and the caller needs to refuse, not to know which. A fetch
    the https guard refused says so (fsspec reports it as a missing file; leaderboard/public_http.py)."""
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:
        refused = refusal_in(exc)
        if refused:
            raise StorageError(f"{url}: refused, {refused}; weights are fetched over https from public hosts "
                               "only, never from the verifier's own network") from exc
        raise StorageError(f"{url}: cannot {doing} it ({type(exc).__name__}: {exc})") from exc


def _protocols(fs) -> set[str]:
    protocol = fs.protocol
    return {protocol} if isinstance(protocol, str) else set(protocol)


def _hex(sha256: str) -> str:
    digest = sha256.split(":", 1)[1] if sha256.startswith("sha256:") else sha256
    if not _HEX.match(digest):
        raise StorageError(f"{sha256!r} is not a sha256 (sha256:<64 lowercase hex digits>)")
    return digest


def _update(meter: Any, n: int) -> None:
    if meter is not None and n:
        meter.update(n)


def stderr_say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
