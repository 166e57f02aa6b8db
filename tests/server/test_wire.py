"""The framing: messages survive batching, large payloads, short writes and hostile peers, and the request
reader and the bulk reader read each other's messages (one framing for every socket)."""

from __future__ import annotations

import socket
import threading

import numpy as np
import pytest

from harness.wire import framing
from harness.wire.framing import MAGIC, MAX_HEADER, PREFIX, Channel, ChannelClosed, FrameRefused


def _pair() -> tuple[Channel, Channel]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return Channel(a), Channel(b)


def test_back_to_back_messages_with_payloads_arrive_whole_and_in_order():
    left, right = _pair()
    rng = np.random.default_rng(0)
    # small and large payloads mixed: the large ones are bigger than the reader's initial 64 KiB buffer
    arrays = [rng.integers(0, 50257, size=(rows, 129), dtype=np.uint16) for rows in (8, 0, 3, 2048, 8, 4096, 1)]
    sent = []

    def writer():
        for i, array in enumerate(arrays):
            left.send({"op": "log", "i": i, "shape": list(array.shape)}, array if array.size else b"")
            sent.append(i)
        left.send({"op": "end"})

    thread = threading.Thread(target=writer)
    thread.start()
    for i, expected in enumerate(arrays):
        header, payload = right.recv()
        assert header == {"op": "log", "i": i, "shape": list(expected.shape)}
        got = np.frombuffer(payload, dtype=np.uint16).reshape(header["shape"])
        assert np.array_equal(got, expected)  # compared before the next recv, as the view's contract says
    assert right.recv() == ({"op": "end"}, memoryview(b""))
    thread.join()
    assert sent == list(range(len(arrays)))


def test_many_small_messages_sent_without_reading_are_all_read_in_order():
    left, right = _pair()
    for i in range(500):  # what a method's unanswered log lines look like: all in the socket before one read
        left.send({"op": "log", "entry": {"step": i, "loss": 1.0 / (i + 1)}})
    for i in range(500):
        header, payload = right.recv()
        assert header["entry"]["step"] == i and header["entry"]["loss"] == 1.0 / (i + 1)
        assert payload.nbytes == 0


def test_a_frame_that_arrives_a_byte_at_a_time_is_reassembled():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    reader = Channel(b)
    head = b'{"op":"batch","n":3}'
    payload = bytes(range(6))
    frame = PREFIX.pack(MAGIC, len(head), len(payload)) + head + payload

    def trickle():
        for k in range(len(frame)):
            a.send(frame[k : k + 1])

    thread = threading.Thread(target=trickle)
    thread.start()
    header, got = reader.recv()
    thread.join()
    assert header == {"op": "batch", "n": 3} and bytes(got) == payload


def test_a_payload_larger_than_the_socket_buffer_is_sent_whole():
    left, right = _pair()
    big = np.arange(3_000_000, dtype=np.int64)  # 24 MB: far past one sendmsg on a 4 MB socket buffer
    thread = threading.Thread(target=lambda: left.send({"n": big.size}, big))
    thread.start()
    header, payload = right.recv()
    thread.join()
    assert header == {"n": 3_000_000}
    assert np.array_equal(np.frombuffer(payload, dtype=np.int64), np.arange(3_000_000, dtype=np.int64))


def test_hostile_frames_are_refused_before_they_are_read():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.sendall(PREFIX.pack(MAGIC, MAX_HEADER + 1, 0))
    with pytest.raises(FrameRefused, match="header"):
        Channel(b).recv()

    # a 3 GB payload is refused from its length prefix alone: nothing is allocated for it
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.sendall(PREFIX.pack(MAGIC, 2, 3 << 30) + b"{}")
    reader = Channel(b)
    with pytest.raises(FrameRefused, match="3,221,225,472-byte payload"):
        reader.recv(max_payload=0)
    assert len(reader._buffer) <= 1 << 16

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.sendall(PREFIX.pack(MAGIC, 2, 0) + b"[]")
    with pytest.raises(FrameRefused, match="JSON object"):
        Channel(b).recv()

    for constant in (b"NaN", b"Infinity", b"-Infinity"):  # Python's json reads them unless told not to
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        head = b'{"loss":' + constant + b"}"
        a.sendall(PREFIX.pack(MAGIC, len(head), 0) + head)
        with pytest.raises(FrameRefused, match="not a JSON number"):
            Channel(b).recv()

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.sendall(PREFIX.pack(MAGIC, 2, 10) + b"{}" + b"12345")  # the peer dies five bytes short
    a.close()
    with pytest.raises(ChannelClosed, match="closed"):
        Channel(b).recv()


def test_a_peer_that_does_not_speak_the_protocol_is_refused_before_its_header_is_read():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.sendall(PREFIX.pack(b"HTTP", 2, 0) + b"{}")
    with pytest.raises(FrameRefused, match="does not speak this protocol"):
        Channel(b).recv()
    a.sendall(PREFIX.pack(b"SRC1", 2, 0) + b"{}")  # the evaluation channel's old magic
    with pytest.raises(FrameRefused, match="does not speak this protocol"):
        framing.recv(b)


def test_the_request_reader_and_the_bulk_reader_read_each_others_messages():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    payload = np.arange(70_000, dtype=np.float32)  # over SMALL_PAYLOAD: the two-send path
    Channel(a).send({"op": "logits", "n": 70_000}, payload)
    into = np.empty_like(payload)
    header, view = framing.recv(b, allocate=lambda head, nbytes: memoryview(into).cast("B"))
    assert header == {"op": "logits", "n": 70_000} and np.array_equal(into, payload)
    framing.send(a, {"op": "batch"}, b"\x01\x02\x03")
    framing.send_chunks(a, {"op": "chunked"}, 6, [b"abc", b"def"])
    reader = Channel(b)
    assert reader.recv()[0] == {"op": "batch"}
    header, view = reader.recv()
    assert header == {"op": "chunked"} and bytes(view) == b"abcdef"
