"""A safetensors file's header, read and checked without torch, one way for every reader.

Three places read a snapshot's weights before anything loads them: the data server at intake (refuse a
file that is not safetensors before it becomes a snapshot), the evaluation worker (view the tensors in the
payload without copying) and the evaluation's time limit (count the parameters). Each used to parse the
header itself, with its own bounds; a file one accepted could fail another. The rules are here once:

- an 8-byte little-endian header length, positive, at most ``MAX_HEADER`` and inside the file;
- the header a JSON object; every entry but ``__metadata__`` a dtype, a shape of non-negative whole
  numbers and ``data_offsets`` inside the body;
- where the dtype's size is known, the offsets span exactly shape x size bytes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Callable

from harness.errors import SlowrunError

MAX_HEADER = 100 << 20  # the safetensors library's own bound on a header
ITEM_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


class SafetensorsError(SlowrunError):
    """The bytes are not a safetensors file these readers accept; the message says what is wrong."""


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of the header: its byte range is ``[body_start + start, body_start + end)`` of the file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def elements(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class SafetensorsHeader:
    tensors: tuple[TensorEntry, ...]
    body_start: int  # 8 + the header's length

    @property
    def elements(self) -> int:
        return sum(t.elements for t in self.tensors)


def read_header(read: Callable[[int, int], bytes], size: int) -> SafetensorsHeader:
    """The checked header of a file of ``size`` bytes, read through ``read(offset, length)`` (a file or a
    buffer: only the prefix and the header are read, never the body)."""
    if size < 8:
        raise SafetensorsError("not a safetensors file (shorter than its 8-byte prefix)")
    n = int.from_bytes(read(0, 8), "little")
    if n <= 0 or n > MAX_HEADER or 8 + n > size:
        raise SafetensorsError("not a safetensors file (bad header length)")
    try:
        header = json.loads(read(8, n))
    except (ValueError, UnicodeDecodeError):
        raise SafetensorsError("an unreadable safetensors header") from None
    if not isinstance(header, dict):
        raise SafetensorsError("a malformed safetensors header (not a JSON object)")
    body = size - 8 - n
    tensors = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = info["dtype"]
            shape = tuple(info["shape"])
            start, end = info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise SafetensorsError(f"tensor {name!r}: a dtype, a shape and data_offsets are needed") from None
        if (not isinstance(dtype, str) or not all(_whole(s) and s >= 0 for s in shape)
                or not (_whole(start) and _whole(end) and 0 <= start <= end <= body)):
            raise SafetensorsError(f"tensor {name!r} does not fit the file (shape {list(shape)}, offsets "
                                   f"{start}..{end} of a {body}-byte body)")
        entry = TensorEntry(str(name), dtype, tuple(int(s) for s in shape), int(start), int(end))
        item = ITEM_BYTES.get(dtype)
        if item is not None and end - start != entry.elements * item:
            raise SafetensorsError(f"tensor {name!r} does not fit the file (offsets {start}..{end} hold "
                                   f"{end - start} bytes for {entry.elements} x {item}-byte values)")
        tensors.append(entry)
    return SafetensorsHeader(tuple(tensors), 8 + n)


def header_of_file(path, size: int) -> SafetensorsHeader:
    with open(path, "rb") as f:
        def read(offset: int, length: int) -> bytes:
            f.seek(offset)
            return f.read(length)

        return read_header(read, size)


def header_of_buffer(buffer) -> SafetensorsHeader:
    view = memoryview(buffer).cast("B")
    return read_header(lambda offset, length: bytes(view[offset:offset + length]), view.nbytes)


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
