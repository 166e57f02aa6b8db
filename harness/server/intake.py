"""Taking what the method wrote into its outbox into harness storage, and refusing what is not what it claims.

The method's process writes a snapshot's weights (and its exported graph) into ``sandbox/outbox`` and names
the file in a request. The data server moves the file out of the method's reach before it reads a byte of it,
checks that what moved is the very file it looked at (the method may swap entries at any moment), and checks
its format (safetensors by the rules of :mod:`harness.formats.safetensors_header`; a graph by
:mod:`harness.eval.graph_check`). Nothing the method wrote is ever unpickled here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from pathlib import Path

from harness.errors import RequestError
from harness.eval.graph_check import MAX_PROGRAM_BYTES, GraphRefused, check_program, parse_program
from harness.formats.snapshots import GRAPH, GRAPH_CONSTANTS, sha256_file
from harness.formats.safetensors_header import SafetensorsError, header_of_file

BUILDER_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")


OUTBOX_NAME = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


def check_safetensors(path: Path, size: int, what: str = "weights") -> None:
    """Refuse a file that is not a well-formed safetensors file (read without torch: the header is JSON, and
    every tensor's byte range must lie inside the file and match its shape and dtype)."""
    try:
        header_of_file(path, size)
    except SafetensorsError as exc:
        raise RequestError(f"the snapshot's {what} file: {exc}") from None


def finite_json(value) -> bool:
    try:
        json.dumps(value, allow_nan=False)
        return True
    except (TypeError, ValueError):
        return False


def is_torch_save(path: Path) -> bool:
    """torch.save's format (a zip archive) by its first bytes: nothing of the file is unpickled here; only
    the method's own process ever loads it, inside its sandbox."""
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def outbox_file(outbox: Path, name) -> tuple[Path, os.stat_result]:
    """The outbox entry `name` as it is now (the method may swap it at any moment: `take` checks that
    what it moves is this entry)."""
    if not isinstance(name, str) or not OUTBOX_NAME.match(name) or name.startswith(".."):
        raise RequestError(f"outbox file name {name!r} is not a plain file name")
    path = outbox / name
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise RequestError(f"{name!r} is not in the outbox") from None
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        raise RequestError(f"outbox entry {name!r} must be a plain file with one link (not a link or a folder)")
    return path, info


def take(path: Path, info: os.stat_result, destination: Path) -> os.stat_result:
    """Move an outbox entry into harness storage and make sure what moved is the file that was checked
    and is open here (held open, so its inode cannot be freed and reused meanwhile): an entry swapped
    in between, for a link or another file, is removed and refused. Returns the moved file's status;
    every later check reads the moved file, never the outbox."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        raise RequestError(f"outbox entry {path.name!r} changed while the harness took it; it was refused") from None
    try:
        held = os.fstat(fd)
        if (held.st_dev, held.st_ino) != (info.st_dev, info.st_ino) or held.st_nlink != 1:
            raise RequestError(f"outbox entry {path.name!r} changed while the harness took it; it was refused")
        os.replace(path, destination)
        moved = os.lstat(destination)
        if (moved.st_dev, moved.st_ino) != (held.st_dev, held.st_ino) or not stat.S_ISREG(moved.st_mode):
            os.unlink(destination)
            raise RequestError(f"outbox entry {path.name!r} changed while the harness took it; it was refused")
        return os.fstat(fd)
    finally:
        os.close(fd)


def take_graph(outbox: Path, header: dict, folder: Path, max_bytes: int) -> dict | None:
    """Take the snapshot's exported forward into `folder` and check it (harness/eval/graph_check.py).

    A graph the check refuses is dropped and the reason kept: the snapshot is then evaluated by the
    method's code, as one handed over without a graph. The weights are the snapshot either way."""
    if header.get("graph_file") is None:
        error = header.get("graph_error")
        return {"refused": f"not exported: {str(error)[:500]}"} if error else None
    program, info = outbox_file(outbox, header.get("graph_file"))
    constants, constants_info = outbox_file(outbox, header.get("constants_file"))
    try:
        if info.st_size > MAX_PROGRAM_BYTES:
            raise GraphRefused(f"the exported program is {info.st_size:,} bytes (the limit is {MAX_PROGRAM_BYTES:,})")
        if constants_info.st_size > max_bytes:
            raise GraphRefused(f"the graph's constants are {constants_info.st_size:,} bytes, over the limit")
        take(program, info, folder / GRAPH)
        take(constants, constants_info, folder / GRAPH_CONSTANTS)
        try:
            check_safetensors(folder / GRAPH_CONSTANTS, constants_info.st_size, what="graph constants")
        except RequestError as exc:
            raise GraphRefused(str(exc)) from None
        data = (folder / GRAPH).read_bytes()
        summary = check_program(parse_program(data))
    except GraphRefused as exc:
        for name in (GRAPH, GRAPH_CONSTANTS):
            (folder / name).unlink(missing_ok=True)
        for leftover in (program, constants):
            leftover.unlink(missing_ok=True)
        return {"refused": str(exc)[:500]}
    return {"sha256": hashlib.sha256(data).hexdigest(), "constants_sha256": sha256_file(folder / GRAPH_CONSTANTS),
            "bytes": len(data), "operators": sum(summary.ops.values()), "input_shape": list(summary.input_shape)}
