"""Framing for the data server's socket: a JSON header and an optional raw payload per message.

Nothing on this wire is ever unpickled: headers are JSON and payloads are raw array bytes whose dtype
and shape the header names, so a hostile peer can send wrong numbers but never code. Frames are
length-prefixed (4 bytes of header length, 8 of payload length) and read with `recv_into` into one
growing buffer, so a 1 MB batch costs one copy on each side.
"""

from __future__ import annotations

import json
import socket
import struct

from harness.errors import SlowrunError

_PREFIX = struct.Struct("<IQ")
MAX_HEADER = 16 << 20  # a header is metadata; anything larger is a broken or hostile peer


class ChannelClosed(SlowrunError):
    """The other end of the channel went away."""


class Channel:
    """One end of a connection; not thread-safe (each side uses it from one thread at a time)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._buffer = bytearray(1 << 16)
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):  # a 256 x 2049 uint16 batch is 1 MB: fewer syscalls
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, 4 << 20)
            except OSError:
                pass

    def send(self, header: dict, payload=b"") -> None:
        head = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
        view = memoryview(payload).cast("B") if not isinstance(payload, (bytes, bytearray)) else memoryview(payload)
        self.sock.sendall(_PREFIX.pack(len(head), view.nbytes) + head)
        if view.nbytes:
            self.sock.sendall(view)

    def _read_exact(self, n: int) -> memoryview:
        if len(self._buffer) < n:
            self._buffer = bytearray(max(n, 2 * len(self._buffer)))
        view = memoryview(self._buffer)[:n]
        got = 0
        while got < n:
            k = self.sock.recv_into(view[got:], n - got)
            if k == 0:
                raise ChannelClosed("the peer closed the connection")
            got += k
        return view

    def recv(self) -> tuple[dict, memoryview]:
        """The next message: (header, payload). The payload view is valid until the next recv."""
        head_len, payload_len = _PREFIX.unpack(bytes(self._read_exact(_PREFIX.size)))
        if head_len > MAX_HEADER:
            raise ChannelClosed(f"refused a {head_len}-byte header (limit {MAX_HEADER})")
        header = json.loads(bytes(self._read_exact(head_len)))
        if not isinstance(header, dict):
            raise ChannelClosed("a message header must be a JSON object")
        payload = self._read_exact(payload_len) if payload_len else memoryview(b"")
        return header, payload

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
