"""The worker's wire: JSON headers and raw payloads, with the receiver choosing where payloads land."""

from __future__ import annotations

import socket
import threading

import numpy as np
import pytest

from harness.wire import framing


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def send_in_thread(fn):
    thread = threading.Thread(target=fn)
    thread.start()
    return thread


def test_header_and_large_payload_arrive_intact_in_the_buffer_the_receiver_chose(pair):
    a, b = pair
    values = np.random.default_rng(0).standard_normal((7, 33, 1001)).astype(np.float32)  # > socket buffers
    thread = send_in_thread(lambda: framing.send(a, {"op": "logits", "shape": list(values.shape)}, memoryview(values)))
    out = np.empty_like(values)
    seen = {}

    def allocate(header, nbytes):
        seen.update(header=header, nbytes=nbytes)
        return memoryview(out).cast("B")

    header, payload = framing.recv(b, allocate=allocate)
    thread.join()
    assert header == {"op": "logits", "shape": [7, 33, 1001]}
    assert seen["nbytes"] == values.nbytes == payload.nbytes
    np.testing.assert_array_equal(out, values)


def test_small_messages_keep_their_order(pair):
    a, b = pair
    for i in range(3):
        framing.send(a, {"i": i}, bytes([i]) * i)
    received = [framing.recv(b) for _ in range(3)]
    assert [(h["i"], bytes(p)) for h, p in received] == [(0, b""), (1, b"\x01"), (2, b"\x02\x02")]


def test_a_closed_peer_is_an_error_not_an_empty_message(pair):
    a, b = pair
    a.close()
    with pytest.raises(framing.ChannelError, match="closed the channel"):
        framing.recv(b)


def test_a_peer_that_dies_mid_message_is_reported(pair):
    a, b = pair
    a.sendall(framing.PREFIX.pack(framing.MAGIC, 2, 0) + b"{")
    a.close()
    with pytest.raises(framing.ChannelError, match="in the middle of a message"):
        framing.recv(b)


def test_garbage_and_oversized_messages_are_refused_before_allocation(pair):
    a, b = pair
    a.sendall(b"\x80\x04\x95" + b"\0" * 13)  # a pickle's opening bytes: never interpreted
    with pytest.raises(framing.ChannelError, match="does not speak this protocol"):
        framing.recv(b)
    a.sendall(framing.PREFIX.pack(framing.MAGIC, 2, 1 << 40))
    with pytest.raises(framing.ChannelError, match="the limit is 1,024 bytes"):
        framing.recv(b, max_payload=1024)
    a.sendall(framing.PREFIX.pack(framing.MAGIC, framing.MAX_HEADER + 1, 0))
    with pytest.raises(framing.ChannelError, match="message header"):
        framing.recv(b)


def test_headers_must_be_json_objects(pair):
    a, b = pair
    a.sendall(framing.PREFIX.pack(framing.MAGIC, 2, 0) + b"[]")
    with pytest.raises(framing.ChannelError, match="JSON object"):
        framing.recv(b)
    deep = b"[" * 100_000
    a.sendall(framing.PREFIX.pack(framing.MAGIC, len(deep), 0) + deep)
    with pytest.raises(framing.ChannelError, match="not valid JSON"):
        framing.recv(b)
    with pytest.raises(framing.ChannelError, match="must be a dict"):
        framing.send(a, ["not", "a", "dict"])


def test_the_receiver_may_refuse_a_message_after_reading_its_header(pair):
    a, b = pair
    framing.send(a, {"dtype": "int8"}, b"xyz")

    def refuse(header, nbytes):
        raise ValueError(f"dtype {header['dtype']} not accepted")

    with pytest.raises(ValueError, match="int8 not accepted"):
        framing.recv(b, allocate=refuse)
    # the unread payload is still in the socket: the channel is out of step and must be dropped
    framing.send(a, {"next": 1})
    with pytest.raises(framing.ChannelError, match="does not speak this protocol"):
        framing.recv(b)


def test_a_buffer_of_the_wrong_size_is_refused(pair):
    a, b = pair
    framing.send(a, {}, b"abcd")
    with pytest.raises(framing.ChannelError, match="must be 4 writable bytes"):
        framing.recv(b, allocate=lambda header, nbytes: bytearray(3))
