"""Writing a file so that a reader sees the old one or the whole new one, never a mix, and never a
temporary file left behind.

One rule for every file the harness writes and later trusts (records, run specs, checkpoint indexes,
caches and their sidecars, reference curves): the bytes go to a temporary file beside the target (same
folder, so the rename cannot cross file systems; named ``.NAME.*.tmp``, so nothing that lists the folder
mistakes it for the real one), are flushed and fsynced, the temporary file is renamed over the target,
and the folder is fsynced so the rename survives a crash too. Ten near-copies of this had drifted apart
(some without fsync, some with a fixed temporary name two threads could share).

The process supervisor (``harness/sandbox/supervise.py``) keeps its own few lines: it runs as a
standalone script under ``python -I -S`` and imports nothing from the harness."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """An open temporary file beside ``path``; when the block ends without an error it is fsynced and
    renamed over ``path``, else removed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    fsync_folder(target.parent)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_output(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_output(path, "w") as handle:
        handle.write(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int | None = 2, sort_keys: bool = True) -> Path:
    """``obj`` as JSON (finite numbers only) and a final newline."""
    return write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, allow_nan=False) + "\n")


def fsync_folder(folder: str | os.PathLike) -> None:
    """Make a rename in ``folder`` durable where the platform allows opening a folder."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the rename itself has happened
    finally:
        os.close(fd)
