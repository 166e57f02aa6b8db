"""A length-prefixed message channel over a Unix socket: a JSON header plus raw bytes, never pickle.

The harness talks to the evaluation worker (which runs the method's untrusted model code) through this
channel, so everything that comes back is treated as hostile input: a message is a fixed prefix (magic,
header length, payload length), a JSON object, and a payload of plain bytes the receiver interprets
itself (shape and dtype are checked against what was asked). Nothing is ever unpickled, and a receiver
that did not ask for file descriptors closes any that arrive and refuses the message.

Speed matters because logits of every validation batch cross the channel: payloads go out with
``sendall`` of a memoryview (no copy into a bytes object) and come in with ``recv_into`` straight into
a buffer the receiver chooses (``allocate``), e.g. the storage of the tensor that will hold them.

Shared memory (a sealed memfd the harness maps) was measured against the socket for logits between two
processes on the 2-core dev machine: 4 MB (a synthetic-track batch) 0.6-1.0 ms either way, 64 MB 19-26 ms
either way once the socket buffers are 4 MB; both cost two copies, and a batch's forward pass takes ~65 ms.
It did not pay, and it would let the worker rewrite or truncate memory the harness is reading, so the
socket it is. A file descriptor the worker tries to pass is dropped by the kernel (recv reads no
ancillary data).
"""

from __future__ import annotations

import json
import os
import socket
import struct
from typing import Callable

from harness.errors import SlowrunError

MAGIC = b"SRC1"
PREFIX = struct.Struct("!4sIQ")  # magic, header length, payload length
MAX_HEADER_BYTES = 1 << 20  # headers are small JSON objects; a bigger one is a broken or hostile peer
STATUS_DIR = "status"  # in the zygote's scratch: keepers write their workers' outcomes there, workers cannot
SMALL_PAYLOAD = 1 << 16  # payloads up to this size are joined to the header in one send

Allocate = Callable[[dict, int], "memoryview | bytearray"]


class ChannelError(SlowrunError):
    """The peer closed the channel or sent something that is not a well-formed message."""


def _as_bytes_view(payload) -> memoryview:
    view = payload if isinstance(payload, memoryview) else memoryview(payload)
    if not view.c_contiguous:
        raise ChannelError("a channel payload must be a C-contiguous buffer")
    return view.cast("B") if (view.format != "B" or view.ndim != 1) else view


def send(sock: socket.socket, header: dict, payload=b"", *, fds: tuple[int, ...] = ()) -> None:
    """Send one message: ``header`` (a JSON-able dict) and ``payload`` (any C-contiguous buffer).

    ``fds`` are file descriptors passed along (SCM_RIGHTS, attached to the message's first bytes): only
    the harness passes any, to the fork server, and only :func:`recv_with_fds` accepts them."""
    if not isinstance(header, dict):
        raise ChannelError(f"a channel header must be a dict, got {type(header).__name__}")
    head = json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if len(head) > MAX_HEADER_BYTES:
        raise ChannelError(f"channel header of {len(head)} bytes exceeds {MAX_HEADER_BYTES}")
    body = _as_bytes_view(payload)
    first = PREFIX.pack(MAGIC, len(head), body.nbytes) + head
    if fds:
        sent = socket.send_fds(sock, [first], list(fds))
        sock.sendall(memoryview(first)[sent:])
        if body.nbytes:
            sock.sendall(body)
        return
    if body.nbytes <= SMALL_PAYLOAD:
        sock.sendall(first + bytes(body))
        return
    sock.sendall(first)
    sock.sendall(body)


def send_chunks(sock: socket.socket, header: dict, nbytes: int, chunks) -> None:
    """Send one message whose ``nbytes`` payload bytes arrive as successive ``chunks`` (buffers), for a
    payload that never exists whole in host memory (a GPU's logits through small staging buffers). The
    receiver sees an ordinary message. Chunks that add up to anything but ``nbytes`` leave the channel out
    of step, so that raises and the sender must close it."""
    head = json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if len(head) > MAX_HEADER_BYTES:
        raise ChannelError(f"channel header of {len(head)} bytes exceeds {MAX_HEADER_BYTES}")
    sock.sendall(PREFIX.pack(MAGIC, len(head), nbytes) + head)
    sent = 0
    for chunk in chunks:
        body = _as_bytes_view(chunk)
        if sent + body.nbytes > nbytes:
            raise ChannelError(f"chunks of more than the {nbytes} payload bytes announced")
        sock.sendall(body)
        sent += body.nbytes
    if sent != nbytes:
        raise ChannelError(f"chunks of {sent} bytes where {nbytes} were announced")


def _recv_exact(sock: socket.socket, view: memoryview, started: bool = True) -> None:
    got = 0
    while got < view.nbytes:
        n = sock.recv_into(view[got:])
        if n == 0:
            if not started and got == 0:
                raise ChannelError("the peer closed the channel")
            raise ChannelError("the peer closed the channel in the middle of a message")
        got += n


def recv(sock: socket.socket, *, allocate: Allocate | None = None,
         max_payload: int | None = None) -> tuple[dict, memoryview]:
    """Receive one message: ``(header, payload)``.

    ``allocate(header, nbytes)`` returns the writable buffer of exactly ``nbytes`` bytes the payload is
    read into (it may raise to refuse the message after seeing the header; the channel is then out of
    step and must be closed); by default a new bytearray. ``max_payload`` bounds the payload length
    before anything is allocated.
    """
    prefix = bytearray(PREFIX.size)
    _recv_exact(sock, memoryview(prefix), started=False)
    return _finish(sock, prefix, allocate, max_payload)


def _finish(sock: socket.socket, prefix: bytearray, allocate: Allocate | None,
            max_payload: int | None) -> tuple[dict, memoryview]:
    """The rest of a message whose prefix has been read: its header, then its payload."""
    magic, head_len, body_len = PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise ChannelError(f"bad channel magic {bytes(magic)!r}: the peer does not speak this protocol")
    if head_len > MAX_HEADER_BYTES:
        raise ChannelError(f"channel header of {head_len} bytes exceeds {MAX_HEADER_BYTES}")
    if max_payload is not None and body_len > max_payload:
        raise ChannelError(f"channel payload of {body_len} bytes exceeds the {max_payload} expected")
    head = bytearray(head_len)
    _recv_exact(sock, memoryview(head))
    try:
        header = json.loads(head.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ChannelError(f"the channel header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ChannelError("the channel header must be a JSON object")
    if allocate is None:
        buffer = memoryview(bytearray(body_len))
    else:
        buffer = _as_bytes_view(allocate(header, body_len))
        if buffer.nbytes != body_len or buffer.readonly:
            raise ChannelError(f"the receive buffer must be {body_len} writable bytes, got {buffer.nbytes}")
    _recv_exact(sock, buffer)
    return header, buffer


def recv_with_fds(sock: socket.socket, max_fds: int) -> tuple[dict, memoryview, list[int]]:
    """Receive one message that may carry up to ``max_fds`` file descriptors: ``(header, payload, fds)``.

    The descriptors arrive with the message's first bytes, so they are read with the prefix; a message
    that carried more than ``max_fds`` (the kernel closes the excess) is refused, with those received
    closed. Used by the fork server, whose only peer is the harness."""
    prefix = bytearray(PREFIX.size)
    got, fds, flags, _ = socket.recv_fds(sock, PREFIX.size, max_fds)
    if not got:
        raise ChannelError("the peer closed the channel")
    prefix[: len(got)] = got
    try:
        if flags & socket.MSG_CTRUNC:
            raise ChannelError(f"a message carried more than the {max_fds} file descriptors expected")
        if len(got) < PREFIX.size:
            _recv_exact(sock, memoryview(prefix)[len(got):])
        header, payload = _finish(sock, prefix, None, None)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return header, payload, list(fds)


def widen_buffers(sock: socket.socket, nbytes: int = 4 << 20) -> None:
    """Ask for bigger socket buffers (best effort: the kernel caps them at net.core.[rw]mem_max)."""
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, nbytes)
        except OSError:
            pass
