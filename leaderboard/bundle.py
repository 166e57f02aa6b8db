"""Submission bundles: everything a maintainer needs to review and file a method's runs, in one folder.

`slowrun submit RUN_DIR [RUN_DIR ...] --out BUNDLE` packs the runs of one method (typically its seeds):

    BUNDLE/
      bundle.json              format, method name and hash, the runs, and the sha256 of every file
      README.md                a stub for the submitter to describe the method
      environment.json         each run's environment as its record states it, and the packing machine's
      method/                  the method directory, exactly the files its content hash covers
      runs/<run>/record.json   each run's record, unchanged
      runs/<run>/metrics.jsonl the metrics log the harness kept, when the run has one
      runs/<run>/snapshots.json  every snapshot: tag, epochs, weights sha256 and size, whether included,
                                 and with --weights-to the URL, sha256 and size of each file left out
      runs/<run>/snapshots/<tag>/spec.json (+ model.safetensors when no larger than --weights-up-to)

A folder rather than an archive, so a pull request shows it file by file. The method folder must still
hash to the records' `method.hash`: a method edited after its runs would not be the method that ran.
`slowrun leaderboard add BUNDLE` reads it back (`read_bundle`) and files every run.

Weights too large for a pull request travel by URL: with `--weights-to URL` every snapshot not included
is put (leaderboard/storage.py) at URL/<method>-<method hash 12>/<run>/<tag>/<file>, its exported graph
beside it, and snapshots.json says where under `remote`; `leaderboard add BUNDLE --verify` fetches them,
sha256 checked, before re-evaluating (`with_fetched_weights`). The key is new and optional, so a version-1
bundle without it reads as before, and the version stays 1.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from harness.errors import LeaderboardError
from harness.formats.method_toml import method_files, method_hash
from harness.formats.records import RECORD_FILENAME, load_record
from harness.common.progress import progress as progress_meter
from harness.formats.snapshots import GRAPH, GRAPH_CONSTANTS, SPEC, TAG_PATTERN, WEIGHTS, sha256_file
from harness.formats.run_spec import RUN_SPEC
from leaderboard.naming import hash_prefix, slug
from leaderboard.storage import Stored, StorageError, fetch, join_url, put_many, run_url, stderr_say

BUNDLE_FILE = "bundle.json"
BUNDLE_FORMAT = "slowrun-bundle"
BUNDLE_VERSION = 1
METRICS = "metrics.jsonl"
SNAPSHOTS_MANIFEST = "snapshots.json"
REMOTE_FILES = (WEIGHTS, GRAPH, GRAPH_CONSTANTS)  # a snapshot's files that may travel by URL (its spec.json never does)
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?B?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1e3, "KB": 1e3, "M": 1e6, "MB": 1e6, "G": 1e9, "GB": 1e9, "T": 1e12, "TB": 1e12}


@dataclass(frozen=True)
class BundledRun:
    run_id: str
    folder: Path  # inside the bundle
    record: dict


@dataclass(frozen=True)
class Bundle:
    root: Path
    method_dir: Path
    runs: tuple[BundledRun, ...]
    uploaded: tuple[Stored, ...] = ()  # what --weights-to put (or found already there), in order


def snapshot_folder_name(tag: str) -> str:
    """The folder a snapshot's files have in a bundle: its tag, as in the run folder, since `--verify` looks
    snapshots up by tag. A tag is a file name already (harness.formats.snapshots.TAG_PATTERN; intake refused
    any other); only a tag that is not one, from a hand-edited record, gets a slug."""
    return tag if TAG_PATTERN.match(tag) else slug(tag)


def parse_size(text: str) -> int:
    """`0`, `500MB`, `2G` as bytes (decimal units)."""
    match = _SIZE.match(str(text))
    if not match:
        raise LeaderboardError(f"--weights-up-to takes a size such as 0, 200MB or 2GB, got {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def _method_dir_of(run_dir: Path) -> Path | None:
    try:
        spec = json.loads((run_dir / RUN_SPEC).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    folder = spec.get("method_dir") if isinstance(spec, dict) else None
    return Path(folder) if isinstance(folder, str) else None


def _write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def create_bundle(run_dirs: list[str | Path], out: str | Path, *, method_dir: str | Path | None = None,
                  weights_up_to: int = 0, weights_to: str | None = None, progress: bool = False) -> Bundle:
    """Pack the runs into the folder `out` (new or empty); return what was packed.

    `weights_to`, a URL, receives every snapshot's weights larger than `weights_up_to` (and its exported
    graph); `progress` shows the upload on stderr."""
    out = Path(out)
    if not run_dirs:
        raise LeaderboardError("name at least one run folder to submit")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LeaderboardError(f"{out} exists and is not an empty folder; choose a new --out")
    runs = []
    for given in run_dirs:
        run_dir = Path(given)
        record_path = run_dir / RECORD_FILENAME
        if not record_path.is_file():
            raise LeaderboardError(f"{run_dir}: no {RECORD_FILENAME}; pass finished run folders (slowrun run --out)")
        runs.append((run_dir, load_record(record_path)))
    hashes = sorted({record["method"]["hash"] for _, record in runs})
    if len(hashes) != 1:
        raise LeaderboardError(f"the runs used {len(hashes)} different method folders ({', '.join(h[7:19] for h in hashes)}); "
                               "a bundle holds the runs of one method: submit each method on its own")
    run_ids = [record["run_id"] for _, record in runs]
    if len(set(run_ids)) != len(run_ids):
        raise LeaderboardError("the same run is named twice; list each run folder once")

    source = Path(method_dir) if method_dir is not None else _method_dir_of(runs[0][0])
    if source is None or not source.is_dir():
        raise LeaderboardError(f"cannot find the method folder of {runs[0][0]} (its {RUN_SPEC} names none that "
                               "exists here); pass it with --method DIR")
    if method_hash(source) != hashes[0]:
        raise LeaderboardError(f"{source} hashes to {method_hash(source)[7:19]}, the runs used {hashes[0][7:19]}: "
                               "the method folder changed after the runs; submit the folder as it was when they ran")

    remote, uploaded = _upload_snapshots(runs, weights_up_to, weights_to, progress) if weights_to else ({}, [])

    out.mkdir(parents=True, exist_ok=True)
    for path in method_files(source):
        target = out / "method" / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)

    bundled, environments = [], {}
    for run_dir, record in sorted(runs, key=lambda item: (item[1]["seed"], item[1]["run_id"])):
        folder = out / "runs" / slug(record["run_id"])
        folder.mkdir(parents=True)
        shutil.copyfile(run_dir / RECORD_FILENAME, folder / RECORD_FILENAME)
        if (run_dir / METRICS).is_file():
            shutil.copyfile(run_dir / METRICS, folder / METRICS)
        _write_json(folder / SNAPSHOTS_MANIFEST, _pack_snapshots(run_dir, folder, record, weights_up_to, remote))
        environments[record["run_id"]] = record["environment"]
        bundled.append(BundledRun(record["run_id"], folder, record))

    _write_json(out / "environment.json", {"runs": environments, "packed_on": {
        "python": platform.python_version(), "platform": platform.platform(), "executable": sys.executable}})
    (out / "README.md").write_text(_readme(bundled), encoding="utf-8")
    _write_json(out / BUNDLE_FILE, {
        "format": BUNDLE_FORMAT, "version": BUNDLE_VERSION,
        "method": {"name": bundled[0].record["method"]["name"], "hash": hashes[0]},
        "runs": [{"run_id": r.run_id, "seed": r.record["seed"], "folder": r.folder.relative_to(out).as_posix()}
                 for r in bundled],
        "files": {p.relative_to(out).as_posix(): "sha256:" + sha256_file(p)
                  for p in sorted(out.rglob("*")) if p.is_file() and p.name != BUNDLE_FILE},
    })
    return Bundle(out, out / "method", tuple(bundled), tuple(uploaded))


def _upload_snapshots(runs: list[tuple[Path, dict]], weights_up_to: int, base: str,
                      progress: bool) -> tuple[dict[tuple[str, str], dict], list[Stored]]:
    """Put every snapshot the bundle will not include at BASE/<method>-<hash 12>/<run>/<tag>/<file>.

    Done before the bundle folder is made, so a failed upload leaves no half-made bundle behind, and
    `slowrun submit` run again sends only what had not arrived (storage.put skips identical files). The
    method's hash in the path keeps two versions of a method apart under one name; one progress meter over
    all the bytes, because 480 snapshots would otherwise print 1,440 bars."""
    method = runs[0][1]["method"]
    method_part = f"{slug(method['name'])}-{hash_prefix(method['hash'])}"
    jobs = []
    for run_dir, record in runs:
        here = run_url(base, method_part, slug(record["run_id"]))
        for snapshot in record["snapshots"]:
            source = run_dir / "snapshots" / snapshot["tag"]
            weights = source / WEIGHTS
            if not weights.is_file() or weights.stat().st_size <= weights_up_to:
                continue  # no weights to send, or they go into the bundle itself
            jobs += [(record["run_id"], snapshot["tag"], source / name,
                      join_url(here, snapshot_folder_name(snapshot["tag"]), name))
                     for name in REMOTE_FILES if (source / name).is_file()]
    remote: dict[tuple[str, str], dict] = {}
    uploaded = []
    with progress_meter(sum(path.stat().st_size for _, _, path, _ in jobs), desc=f"upload to {base}", unit="B",
                        enabled=progress) as meter:
        sent = put_many([(path, url) for _, _, path, url in jobs], meter=meter, say=stderr_say if progress else None)
        for (run_id, tag, path, _), stored in zip(jobs, sent):
            remote.setdefault((run_id, tag), {})[path.name] = {"url": stored.url, "sha256": stored.sha256,
                                                               "bytes": stored.bytes}
            uploaded.append(stored)
    return remote, uploaded


def _pack_snapshots(run_dir: Path, folder: Path, record: dict, weights_up_to: int,
                    remote: dict[tuple[str, str], dict]) -> list[dict]:
    manifest = []
    for snapshot in record["snapshots"]:
        tag = snapshot["tag"]
        source = run_dir / "snapshots" / tag
        weights = source / WEIGHTS
        item = {"tag": tag, "epochs": snapshot["epochs"], "weights_sha256": None, "bytes": None, "included": False}
        if weights.is_file():
            size = weights.stat().st_size
            sent = remote.get((record["run_id"], tag))
            # an uploaded file was hashed while it was sent: reading 1.8 TB a second time would add hours
            item.update(weights_sha256=sent[WEIGHTS]["sha256"] if sent else "sha256:" + sha256_file(weights), bytes=size)
            target = folder / "snapshots" / snapshot_folder_name(tag)
            if (source / SPEC).is_file():
                target.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source / SPEC, target / SPEC)
            if size <= weights_up_to:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(weights, target / WEIGHTS)
                for name in (GRAPH, GRAPH_CONSTANTS):  # the exported forward travels with its weights
                    if (source / name).is_file():
                        shutil.copyfile(source / name, target / name)
                item["included"] = True
            elif sent:
                item["remote"] = sent  # {file name: {url, sha256, bytes}}; included files need no URL
        manifest.append(item)
    return manifest


def _readme(runs: list[BundledRun]) -> str:
    record = runs[0].record
    losses = ", ".join(f"{r.record['result']['val_loss']:.5f}" if r.record["result"] else r.record["status"]
                       for r in runs)
    return (f"# {record['method']['name']}\n\n"
            f"Track `{record['track']['name']}`, class `{record['compute']['class']}`, "
            f"budget {record['budget_epochs']:g} epochs, {len(runs)} run(s): val loss {losses}.\n\n"
            "## What the method does\n\nDescribe the idea, what changed against the record it beats, and why it "
            "should work.\n\n## How to reproduce\n\nThe exact `slowrun run` command lines, hardware and time.\n")


def read_bundle(root: str | Path) -> Bundle:
    """A bundle folder checked against its own manifest: every file present and unchanged, nothing missing."""
    root = Path(root)
    if not (root / BUNDLE_FILE).is_file():  # not a FIFO either: reading one would wait for ever
        raise LeaderboardError(f"{root}: not a submission bundle (no {BUNDLE_FILE} file); make one with "
                               "`slowrun submit`")
    try:
        manifest = json.loads((root / BUNDLE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LeaderboardError(f"{root}: not a submission bundle ({BUNDLE_FILE} unreadable: {exc}); make one "
                               "with `slowrun submit`") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise LeaderboardError(f"{root / BUNDLE_FILE}: not a {BUNDLE_FORMAT} manifest")
    if manifest.get("version") != BUNDLE_VERSION:
        raise LeaderboardError(f"{root / BUNDLE_FILE}: bundle version {manifest.get('version')!r}, this harness "
                               f"reads {BUNDLE_VERSION}")
    files, runs = manifest.get("files"), manifest.get("runs")
    # bundle.json is not hashed: anything may be in it, and a wrong shape is a refusal, not a crash
    if not isinstance(files, dict) or not all(isinstance(d, str) for d in files.values()):
        raise LeaderboardError(f"{root / BUNDLE_FILE}: `files` must map each file's path to its \"sha256:...\" "
                               f"digest, got {json.dumps(files)[:60]}; make the bundle again with `slowrun submit`")
    if not isinstance(runs, list):
        raise LeaderboardError(f"{root / BUNDLE_FILE}: `runs` must be a list of {{run_id, folder}}, got "
                               f"{json.dumps(runs)[:60]}; make the bundle again with `slowrun submit`")
    # the walk comes first: nothing below opens an entry it has not seen to be a regular file or a folder
    regular, odd = _entries(root)
    problems = [odd[relpath] for relpath in sorted(odd)]
    for relpath, digest in sorted(files.items()):
        path = root / relpath
        if ".." in Path(relpath).parts or not path.resolve().is_relative_to(root.resolve()):
            problems.append(f"{relpath}: outside the bundle")
        elif Path(relpath).as_posix() in odd:
            continue  # a link, or not a regular file: refused above, and not read
        elif Path(relpath).as_posix() not in regular:
            problems.append(f"{relpath}: listed in {BUNDLE_FILE} but missing")
        elif "sha256:" + sha256_file(path) != digest:
            problems.append(f"{relpath}: changed since the bundle was made")
    listed = set(files) | {BUNDLE_FILE}
    problems += [f"{relpath}: not listed in {BUNDLE_FILE}" for relpath in sorted(regular - listed)]
    folders = []
    for index, item in enumerate(runs):
        relpath = item.get("folder") if isinstance(item, dict) else None
        if not isinstance(relpath, str) or not isinstance(item.get("run_id"), str):
            problems.append(f"runs[{index}]: needs run_id and folder")
        elif (Path(relpath).is_absolute() or ".." in Path(relpath).parts
              or f"{Path(relpath).as_posix()}/{RECORD_FILENAME}" not in files):
            # bundle.json itself is not hashed: a folder outside the bundle, or one whose record the manifest
            # does not cover, would file a record (and verify snapshots) that nothing here vouches for
            problems.append(f"runs[{index}].folder: {relpath!r} is not a run folder of this bundle (a relative path "
                            f"whose {RECORD_FILENAME} is listed in {BUNDLE_FILE})")
        else:
            folders.append((item["run_id"], root / relpath))
    if problems:
        raise LeaderboardError(f"{root}: the bundle does not match its manifest:\n  " + "\n  ".join(problems))
    runs = [BundledRun(run_id, folder, load_record(folder / RECORD_FILENAME)) for run_id, folder in folders]
    if not runs:
        raise LeaderboardError(f"{root}: the bundle holds no runs")
    return Bundle(root, root / "method", tuple(runs))


def _entries(root: Path) -> tuple[set[str], dict[str, str]]:
    """(every regular file under `root`, the problem of each entry that is neither a regular file nor a
    folder), by relative path, found with lstat alone: nothing is followed or opened.

    A symbolic link could point anywhere (`rglob` neither follows nor reports them), and a FIFO or a device
    node (what a tar archive extracted as root may hold) blocks, or never ends, whoever reads it: hashing
    the bundle's method folder would hang `leaderboard add`."""
    regular, odd = set(), {}
    for folder, dirs, names in os.walk(root, followlinks=False):
        for name in dirs + names:
            path = Path(folder, name)
            relpath = path.relative_to(root).as_posix()
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                odd[relpath] = f"{relpath}: a symbolic link; a bundle holds files and folders only"
            elif stat.S_ISREG(mode):
                regular.add(relpath)
            elif not stat.S_ISDIR(mode):
                odd[relpath] = (f"{relpath}: not a regular file (a FIFO, socket or device node); a bundle holds "
                                "files and folders only")
    return regular, odd


def is_bundle(path: str | Path) -> bool:
    return (Path(path) / BUNDLE_FILE).is_file()


Verifier = Callable[[Path, dict], list[str]]  # as leaderboard.add.Verifier: (run folder, record) -> problems


def with_fetched_weights(verify: Verifier, cache_dir: str | Path, *, progress: bool = False,
                         local_roots: tuple[str | Path, ...] = ()) -> Verifier:
    """`verify` for a bundle's run folder, run on the snapshots the bundle names by URL once they are fetched.

    The bundle is left as it is (`read_bundle` refuses any file its manifest does not list). The verifier
    gets a folder of its own instead: each snapshot under its record tag (the folder name reverify looks
    for) with its spec.json (and any included file) from the bundle and its fetched files from the cache,
    as links, since a copy of 1.8 TB would double the disk a verification needs. A run that names nothing
    by URL is verified on the bundle's folder, exactly as before. A file that cannot be fetched, or arrives
    with another sha256, is a problem like any other: the run is refused and nothing is filed.
    """
    def verify_with_fetched(run_dir: Path, record: dict) -> list[str]:
        try:
            manifest = json.loads((run_dir / SNAPSHOTS_MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return list(verify(run_dir, record))  # a run folder, not a bundle's: nothing to fetch
        wanted, problems = _remote_entries(manifest)
        if problems or not wanted:
            return problems or list(verify(run_dir, record))
        fetched: dict[str, dict[str, Path]] = {}
        say = stderr_say if progress else None
        with progress_meter(sum(entry["bytes"] for _, _, entry in wanted), desc=f"fetch {record['run_id']}",
                            unit="B", enabled=progress) as meter:
            for tag, name, entry in wanted:
                try:
                    path = fetch(entry["url"], entry["sha256"], cache_dir, size=entry["bytes"], meter=meter, say=say,
                                 local_roots=local_roots)
                except StorageError as exc:
                    return [f"snapshot {tag!r}, {name}: {exc}"]
                fetched.setdefault(tag, {})[name] = path
        with tempfile.TemporaryDirectory(prefix="slowrun-fetched-") as tmp:
            view = Path(tmp)
            for name in (RECORD_FILENAME, METRICS):
                if (run_dir / name).is_file():
                    os.symlink((run_dir / name).resolve(), view / name)
            for item in manifest:
                folder = view / "snapshots" / item["tag"]
                folder.mkdir(parents=True)
                packed = run_dir / "snapshots" / snapshot_folder_name(item["tag"])
                files = {p.name: p for p in packed.iterdir() if p.is_file()} if packed.is_dir() else {}
                for name, path in {**files, **fetched.get(item["tag"], {})}.items():
                    os.symlink(path.resolve(), folder / name)
            return list(verify(view, record))

    return verify_with_fetched


def _remote_entries(manifest) -> tuple[list[tuple[str, str, dict]], list[str]]:
    """(tag, file name, {url, sha256, bytes}) for every file a run's snapshots.json names by URL, or what is
    wrong with it. A bundle comes from a submitter, so its tags and file names become paths here only when
    they are a tag a run can have and one of the files a snapshot holds."""
    where = SNAPSHOTS_MANIFEST
    if not isinstance(manifest, list) or not all(isinstance(item, dict) for item in manifest):
        return [], [f"{where}: not a list of snapshots; make the bundle again with `slowrun submit`"]
    wanted, problems, seen = [], [], set()
    for index, item in enumerate(manifest):
        tag, remote = item.get("tag"), item.get("remote")
        if not isinstance(tag, str) or not TAG_PATTERN.match(tag) or tag in seen:
            problems.append(f"{where}[{index}].tag: {tag!r} is not a snapshot tag, or is listed twice")
            continue
        seen.add(tag)
        if item.get("included") or not remote:
            continue
        if not isinstance(remote, dict):
            problems.append(f"{where}[{index}].remote: not a mapping of file names to URLs")
            continue
        for name, entry in sorted(remote.items()):
            if name not in REMOTE_FILES:
                problems.append(f"{where}[{index}].remote: {name!r} is not a snapshot file ({', '.join(REMOTE_FILES)})")
            elif not (isinstance(entry, dict) and isinstance(entry.get("url"), str)
                      and isinstance(entry.get("sha256"), str) and isinstance(entry.get("bytes"), int)
                      and not isinstance(entry.get("bytes"), bool) and entry["bytes"] >= 0):
                problems.append(f"{where}[{index}].remote[{name!r}]: needs url, sha256 and bytes")
            else:
                wanted.append((tag, name, entry))
        weights = remote.get(WEIGHTS)
        if isinstance(weights, dict) and weights.get("sha256") != item.get("weights_sha256"):
            problems.append(f"{where}[{index}]: the weights' URL names sha256 {weights.get('sha256')}, the snapshot "
                            f"{item.get('weights_sha256')}; the bundle disagrees with itself")
    return wanted, problems
