"""One set of rules for a safetensors header, whoever reads it: the data server at intake, the evaluation
worker's zero-copy views and the evaluation's parameter count agree on every file, including the ones the
server used to accept and the worker then refused."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save

from harness.confined.weights_view import WeightsFormatError, tensor_views
from harness.errors import RequestError
from harness.eval.limits import parameter_count
from harness.formats.safetensors_header import SafetensorsError, header_of_buffer, header_of_file
from harness.server.intake import check_safetensors


def _raw(header: dict, body: bytes) -> bytes:
    head = json.dumps(header).encode()
    return struct.pack("<Q", len(head)) + head + body


def _all_readers(tmp_path, blob: bytes):
    """What each reader makes of `blob`: None where it accepts it, else its error's type."""
    path = tmp_path / "w.safetensors"
    path.write_bytes(blob)
    seen = {}
    for name, read in (("intake", lambda: check_safetensors(path, len(blob))),
                       ("worker", lambda: tensor_views(bytearray(blob))),
                       ("file", lambda: header_of_file(path, len(blob)))):
        try:
            read()
            seen[name] = None
        except (RequestError, WeightsFormatError, SafetensorsError) as exc:
            seen[name] = type(exc).__name__
    return seen


def test_a_real_file_reads_the_same_everywhere(tmp_path):
    tensors = {"a": torch.arange(15, dtype=torch.float32).view(3, 5), "b": torch.ones(7, dtype=torch.bfloat16),
               "c": torch.zeros(0, 4), "d": torch.tensor(2.5)}
    blob = save(tensors, metadata={"why": "a test"})
    assert _all_readers(tmp_path, blob) == {"intake": None, "worker": None, "file": None}
    header = header_of_buffer(blob)
    assert {t.name: t.shape for t in header.tensors} == {"a": (3, 5), "b": (7,), "c": (0, 4), "d": ()}
    assert parameter_count(blob) == header.elements == 15 + 7 + 0 + 1  # counted by hand
    views = tensor_views(bytearray(blob))
    for name, tensor in tensors.items():
        assert torch.equal(views[name], tensor)


@pytest.mark.parametrize("header, body", [
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}}, b"\0" * 16),  # 12 bytes for 4 floats
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8),  # past the end
    ({"w": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 0]}}, b""),  # a negative dimension
    ({"w": {"dtype": "F32", "shape": [1]}}, b"\0" * 4),  # no offsets
    ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [True, 4]}}, b"\0" * 4),  # not whole numbers
])
def test_a_file_one_reader_refuses_every_reader_refuses(tmp_path, header, body):
    seen = _all_readers(tmp_path, _raw(header, body))
    assert None not in seen.values(), seen


def test_a_dtype_only_the_worker_cannot_view_passes_intake_and_is_refused_by_the_worker(tmp_path):
    """Intake checks the layout (the graph's constants may hold any dtype the safetensors library knows); the
    worker views only the dtypes it can map to torch, and says so."""
    seen = _all_readers(tmp_path, _raw({"w": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8))
    assert seen == {"intake": None, "worker": "WeightsFormatError", "file": None}
