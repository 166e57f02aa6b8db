"""The one framing of every socket between a harness process and a confined one: a JSON header and raw bytes.

Two conversations use it. The data server and the method's ranks exchange small requests and replies, one
round trip per training step; the harness and the evaluation worker exchange a snapshot's weights and every
validation batch's logits. Both are framed alike, checked alike, and read by the same bounds:

- a message is a 16-byte prefix (magic ``SRW1``, header length, payload length, little-endian), a JSON
  object, and a payload of plain bytes whose meaning the header names (dtype, shape) and the receiver
  checks against what it asked for. Nothing on this wire is ever unpickled: a hostile peer can send wrong
  numbers but never code;
- sizes are checked from the prefix before anything of the message is read, so a peer cannot make the
  reader allocate past its bounds; a header must be a JSON object without NaN or infinities;
- file descriptors travel only from the harness to the fork server (``SCM_RIGHTS`` with a message's first
  bytes); any other receiver reads no ancillary data, so the kernel drops what a worker tries to pass.

Two readers, for the two shapes of traffic:

- :class:`Channel` (requests): a message leaves in one ``sendmsg`` (prefix, header and payload gathered,
  no concatenated copy), and the reader takes whatever the socket holds with one ``recv_into`` into a
  buffer it keeps, then cuts messages out of it, so a small message costs one read and messages sent back
  to back (log lines that want no reply) are often read together. A 1 MB batch costs one copy each side.
- :func:`recv` (bulk): the payload is read straight into a buffer the receiver chooses (``allocate``), e.g.
  the storage of the tensor that will hold the logits; :func:`send_chunks` sends a payload that never exists
  whole in host memory (a GPU's logits through small staging buffers).

Shared memory (a sealed memfd the harness maps) was measured against the socket for logits between two
processes on the 2-core dev machine: 4 MB (a synthetic-track batch) 0.6-1.0 ms either way, 64 MB 19-26 ms
either way once the socket buffers are 4 MB; both cost two copies, and a batch's forward pass takes ~65 ms.
It did not pay, and it would let the worker rewrite or truncate memory the harness is reading, so the
socket it is.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from typing import Callable

from harness.errors import SlowrunError

MAGIC = b"SRW1"
PREFIX = struct.Struct("<4sIQ")  # magic, header length, payload length
MAX_HEADER = 16 << 20  # a header is metadata; anything larger is a broken or hostile peer
SMALL_PAYLOAD = 1 << 16  # payloads up to this size leave with their header in one send
STATUS_DIR = "status"  # in the zygote's scratch: keepers write their workers' outcomes there, workers cannot
_EMPTY = memoryview(b"")

Allocate = Callable[[dict, int], "memoryview | bytearray"]


class ChannelError(SlowrunError):
    """The peer closed the channel or sent something that is not a well-formed message."""


class ChannelClosed(ChannelError):
    """The other end of the channel went away."""


class FrameRefused(ChannelError):
    """A message broke the reader's bounds (too large, not a JSON object, a non-finite number, not this
    protocol); nothing of it past its prefix was read."""


def _no_constants(name: str):
    raise ValueError(f"{name} is not a JSON number")


def encode_header(header: dict, max_header: int = MAX_HEADER) -> bytes:
    if not isinstance(header, dict):
        raise ChannelError(f"a message header must be a dict, got {type(header).__name__}")
    head = json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if len(head) > max_header:
        raise ChannelError(f"a {len(head):,}-byte message header (the limit is {max_header:,} bytes)")
    return head


def check_prefix(prefix, max_header: int = MAX_HEADER, max_payload: int | None = None) -> tuple[int, int]:
    """(header length, payload length) of a message's prefix, refused before anything else is read."""
    magic, head_len, payload_len = PREFIX.unpack_from(prefix)
    if magic != MAGIC:
        raise FrameRefused(f"a message that does not start with {MAGIC!r} (got {bytes(magic)!r}): the peer does "
                           "not speak this protocol")
    if head_len > max_header:
        raise FrameRefused(f"a {head_len:,}-byte message header (the limit is {max_header:,} bytes)")
    if max_payload is not None and payload_len > max_payload:
        raise FrameRefused(f"a {payload_len:,}-byte payload (the limit is {max_payload:,} bytes)")
    return head_len, payload_len


def decode_header(raw) -> dict:
    try:
        header = json.loads(bytes(raw), parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise FrameRefused(f"a message header that is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise FrameRefused("a message header must be a JSON object")
    return header


def _as_bytes_view(payload) -> memoryview:
    view = payload if isinstance(payload, memoryview) else memoryview(payload)
    if not view.c_contiguous:
        raise ChannelError("a message payload must be a C-contiguous buffer")
    return view.cast("B") if (view.format != "B" or view.ndim != 1) else view


def widen_buffers(sock: socket.socket, nbytes: int = 4 << 20) -> None:
    """Ask for bigger socket buffers (best effort: the kernel caps them at net.core.[rw]mem_max): a 256 x 2049
    uint16 batch is 1 MB, and fewer syscalls carry it."""
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, nbytes)
        except OSError:
            pass


# ---- requests: a buffered reader ------------------------------------------------------------------------

class Channel:
    """One end of a request connection; not thread-safe (each side uses it from one thread at a time)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._buffer = bytearray(1 << 16)
        self._start = 0  # unread bytes are self._buffer[self._start:self._end]
        self._end = 0
        self.last_header_size = 0
        widen_buffers(sock)

    def send(self, header: dict, payload=b"") -> None:
        head = encode_header(header)
        view = _as_bytes_view(payload)
        frame = PREFIX.pack(MAGIC, len(head), view.nbytes) + head
        sent = self.sock.sendmsg([frame, view] if view.nbytes else [frame])
        if sent < len(frame):  # the socket took part of it: the rest the slow way
            self.sock.sendall(memoryview(frame)[sent:])
            sent = len(frame)
        if sent < len(frame) + view.nbytes:
            self.sock.sendall(view[sent - len(frame):])

    def _fill(self, n: int) -> None:
        """Read until at least `n` unread bytes are buffered (one read when the socket already holds them)."""
        if self._end - self._start >= n:
            return
        if self._start == self._end:
            self._start = self._end = 0
        if len(self._buffer) - self._start < n:  # make room: move the unread bytes to the front, or grow
            unread = self._end - self._start
            if len(self._buffer) >= n:
                self._buffer[:unread] = self._buffer[self._start:self._end]
            else:
                grown = bytearray(max(n, 2 * len(self._buffer)))
                grown[:unread] = self._buffer[self._start:self._end]
                self._buffer = grown
            self._start, self._end = 0, unread
        view = memoryview(self._buffer)
        while self._end - self._start < n:
            k = self.sock.recv_into(view[self._end:])
            if k == 0:
                raise ChannelClosed("the peer closed the connection")
            self._end += k

    def _take(self, n: int) -> memoryview:
        self._fill(n)
        view = memoryview(self._buffer)[self._start:self._start + n]
        self._start += n
        return view

    def recv(self, max_header: int = MAX_HEADER, max_payload: int | None = None) -> tuple[dict, memoryview]:
        """The next message: (header, payload). The payload view is valid until the next recv.

        The data server reads the method's requests with the protocol's bounds; the method's side trusts
        the server."""
        self._fill(PREFIX.size)
        head_len, payload_len = check_prefix(memoryview(self._buffer)[self._start:self._start + PREFIX.size],
                                             max_header, max_payload)
        self._start += PREFIX.size
        self.last_header_size = head_len
        header = decode_header(self._take(head_len))
        payload = self._take(payload_len) if payload_len else _EMPTY
        return header, payload

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


# ---- bulk: payloads read into the receiver's buffer ---------------------------------------------------

def send(sock: socket.socket, header: dict, payload=b"", *, fds: tuple[int, ...] = ()) -> None:
    """Send one message: ``header`` (a JSON-able dict) and ``payload`` (any C-contiguous buffer).

    ``fds`` are file descriptors passed along (SCM_RIGHTS, attached to the message's first bytes): only
    the harness passes any, to the fork server, and only :func:`recv_with_fds` accepts them."""
    head = encode_header(header)
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
    head = encode_header(header)
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
                raise ChannelClosed("the peer closed the channel")
            raise ChannelClosed("the peer closed the channel in the middle of a message")
        got += n


def recv(sock: socket.socket, *, allocate: Allocate | None = None,
         max_payload: int | None = None, max_header: int = MAX_HEADER) -> tuple[dict, memoryview]:
    """Receive one message: ``(header, payload)``.

    ``allocate(header, nbytes)`` returns the writable buffer of exactly ``nbytes`` bytes the payload is
    read into (it may raise to refuse the message after seeing the header; the channel is then out of
    step and must be closed); by default a new bytearray. ``max_payload`` bounds the payload length
    before anything is allocated.
    """
    prefix = bytearray(PREFIX.size)
    _recv_exact(sock, memoryview(prefix), started=False)
    return _finish(sock, prefix, allocate, max_payload, max_header)


def _finish(sock: socket.socket, prefix: bytearray, allocate: Allocate | None, max_payload: int | None,
            max_header: int = MAX_HEADER) -> tuple[dict, memoryview]:
    """The rest of a message whose prefix has been read: its header, then its payload."""
    head_len, body_len = check_prefix(prefix, max_header, max_payload)
    head = bytearray(head_len)
    _recv_exact(sock, memoryview(head))
    header = decode_header(head)
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
        raise ChannelClosed("the peer closed the channel")
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
