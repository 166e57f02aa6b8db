"""Weights as views of the payload (harness.confined.weights_view), and logits streamed through two small buffers
(harness.confined.eval_worker.staged_chunks with harness.wire.framing.send_chunks)."""

from __future__ import annotations

import socket
import struct
import threading

import pytest
import torch
from safetensors.torch import load, save

from harness.wire import framing
from harness.confined.eval_worker import staged_chunks
from harness.confined.weights_view import WeightsFormatError, tensor_views


def _state():
    g = torch.Generator().manual_seed(0)
    return {"w": torch.randn(5, 7, generator=g), "half": torch.randn(3, 3, generator=g).bfloat16(),
            "ids": torch.arange(11, dtype=torch.int64), "mask": torch.tensor([True, False, True]),
            "empty": torch.zeros(0, 4), "scalar": torch.tensor(2.5, dtype=torch.float64),
            "odd": torch.arange(3, dtype=torch.int8)}


def test_views_are_what_safetensors_reads_without_a_copy():
    raw = bytearray(save(_state()))
    views = tensor_views(raw)
    reference = load(bytes(raw))
    assert views.keys() == reference.keys()
    for name, tensor in reference.items():
        assert views[name].dtype == tensor.dtype and torch.equal(views[name], tensor)
    buffer = torch.frombuffer(raw, dtype=torch.uint8)
    start, end = buffer.data_ptr(), buffer.data_ptr() + len(raw)
    assert start <= views["w"].data_ptr() < end  # a view of the payload, not a copy
    offset = views["w"].data_ptr() - start
    raw[offset:offset + 4] = struct.pack("<f", 123.0)  # the payload changes and the view sees it: no copy
    assert views["w"].flatten()[0].item() == 123.0


def _file(header: dict, body: bytes) -> bytearray:
    import json

    head = json.dumps(header).encode()
    return bytearray(struct.pack("<Q", len(head)) + head + body)


@pytest.mark.parametrize("header, body, message", [
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8, "does not fit the file"),
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}}, b"\0" * 16, "does not fit the file"),
    ({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}, b"", "does not fit the file"),
    ({"w": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8, "a dtype this reader knows"),
    ({"w": {"dtype": "F32", "shape": [1]}}, b"\0" * 4, "data_offsets"),
])
def test_a_header_that_does_not_fit_its_buffer_is_refused(header, body, message):
    with pytest.raises(WeightsFormatError, match=message):
        tensor_views(_file(header, body))


def test_a_buffer_that_is_not_safetensors_is_refused():
    with pytest.raises(WeightsFormatError, match="shorter than its 8-byte prefix"):
        tensor_views(bytearray(b"abc"))
    with pytest.raises(WeightsFormatError, match="bad header length"):
        tensor_views(bytearray(struct.pack("<Q", 1 << 40) + b"{}"))
    with pytest.raises(WeightsFormatError, match="unreadable"):
        tensor_views(bytearray(struct.pack("<Q", 3) + b"{x}"))


@pytest.mark.parametrize("total", [0, 1, 999, 1000, 1001, 10_007])
def test_logits_streamed_through_two_small_buffers_arrive_whole(total):
    """Two 1000-byte buffers carry payloads of any size; the receiver reads an ordinary message. A buffer
    refilled before its chunk was sent would show up here as wrong bytes."""
    flat = torch.randint(0, 256, (total,), dtype=torch.uint8, generator=torch.Generator().manual_seed(total))
    buffers = [torch.empty(1000, dtype=torch.uint8) for _ in range(2)]
    a, b = socket.socketpair()
    got = {}
    reader = threading.Thread(target=lambda: got.setdefault("message", framing.recv(b)))
    reader.start()
    try:
        framing.send_chunks(a, {"ok": True, "n": total}, total, staged_chunks(flat, buffers))
        reader.join(timeout=10)
    finally:
        a.close()
        b.close()
    header, payload = got["message"]
    assert header == {"ok": True, "n": total}
    assert bytes(payload) == flat.numpy().tobytes()


def test_chunks_that_do_not_add_up_to_what_was_announced_are_refused():
    a, b = socket.socketpair()
    try:
        with pytest.raises(framing.ChannelError, match="chunks of 3 bytes where 5 were announced"):
            framing.send_chunks(a, {}, 5, [b"abc"])
        with pytest.raises(framing.ChannelError, match="more than the 2 payload bytes"):
            framing.send_chunks(a, {}, 2, [b"abc"])
    finally:
        a.close()
        b.close()
