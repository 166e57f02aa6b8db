"""Framing for the data server's socket: a JSON header and an optional raw payload per message.

Nothing on this wire is ever unpickled: headers are JSON and payloads are raw array bytes whose dtype
and shape the header names, so a hostile peer can send wrong numbers but never code. Frames are
length-prefixed (4 bytes of header length, 8 of payload length).

A request is one round trip per training step, so the framing keeps syscalls down: a message leaves in
one `sendmsg` (prefix, header and payload gathered, no concatenated copy of the payload), and the reader
takes whatever the socket holds with one `recv_into` into a buffer it keeps, then cuts messages out of
it, so a small message costs one read and messages sent back to back (log lines that want no reply) are
often read together. A 1 MB batch still costs one copy on each side.
"""

from __future__ import annotations

import json
import socket
import struct

from harness.errors import SlowrunError

_PREFIX = struct.Struct("<IQ")
MAX_HEADER = 16 << 20  # a header is metadata; anything larger is a broken or hostile peer
_EMPTY = memoryview(b"")


class ChannelClosed(SlowrunError):
    """The other end of the channel went away."""


class FrameRefused(SlowrunError):
    """A message broke the reader's bounds (too large, not a JSON object, a non-finite number); nothing of it
    past its length prefix was read."""


def _no_constants(name: str):
    raise ValueError(f"{name} is not a JSON number")


class Channel:
    """One end of a connection; not thread-safe (each side uses it from one thread at a time)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._buffer = bytearray(1 << 16)
        self._start = 0  # unread bytes are self._buffer[self._start:self._end]
        self._end = 0
        self.last_header_size = 0
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):  # a 256 x 2049 uint16 batch is 1 MB: fewer syscalls
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, 4 << 20)
            except OSError:
                pass

    def send(self, header: dict, payload=b"") -> None:
        head = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
        view = memoryview(payload).cast("B") if not isinstance(payload, (bytes, bytearray)) else memoryview(payload)
        frame = _PREFIX.pack(len(head), view.nbytes) + head
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

        The sizes are checked from the length prefix, before any of the message is read, so a peer cannot
        make this process allocate more than the bounds (the data server reads the method's requests with
        the protocol's bounds; the method's side trusts the server)."""
        self._fill(_PREFIX.size)
        head_len, payload_len = _PREFIX.unpack_from(self._buffer, self._start)
        if head_len > max_header:
            raise FrameRefused(f"a {head_len:,}-byte message header (the limit is {max_header:,} bytes)")
        if max_payload is not None and payload_len > max_payload:
            raise FrameRefused(f"a {payload_len:,}-byte payload (the limit is {max_payload:,} bytes)")
        self._start += _PREFIX.size
        self.last_header_size = head_len
        try:
            header = json.loads(bytes(self._take(head_len)), parse_constant=_no_constants)
        except (ValueError, UnicodeDecodeError) as exc:
            raise FrameRefused(f"a message header that is not valid JSON ({exc})") from None
        if not isinstance(header, dict):
            raise FrameRefused("a message header must be a JSON object")
        payload = self._take(payload_len) if payload_len else _EMPTY
        return header, payload

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
