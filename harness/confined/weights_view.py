"""The tensors of a safetensors buffer as views of it, without copying a byte.

The evaluation worker receives a snapshot's weights as one message payload. ``safetensors.torch.load``
wants ``bytes`` (a copy of the payload) and returns tensors of its own (a second copy); for the 1.8B preset
that was three host copies of 3.6 GB before the model's own. Views of the payload leave one: the
payload itself, from which ``load_state_dict`` copies each tensor into the model on its device.

The header is checked the way the data server checks it at intake (offsets inside the buffer, sizes that
match shape and dtype); a buffer that fails gets a clear error, never a view past its end.
"""

from __future__ import annotations

import json
import math
import struct

MAX_HEADER = 100 << 20

_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
           "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


class WeightsFormatError(ValueError):
    """The buffer is not a safetensors file this reader can view."""


def tensor_views(buffer) -> dict:
    """``{name: tensor}`` viewing ``buffer`` (a writable, C-contiguous buffer that must outlive them)."""
    import torch

    view = memoryview(buffer).cast("B")
    if view.nbytes < 8:
        raise WeightsFormatError("the weights are not a safetensors file (shorter than its 8-byte prefix)")
    (n,) = struct.unpack_from("<Q", view, 0)
    if n <= 0 or n > MAX_HEADER or 8 + n > view.nbytes:
        raise WeightsFormatError("the weights are not a safetensors file (bad header length)")
    try:
        header = json.loads(bytes(view[8:8 + n]))
    except (ValueError, UnicodeDecodeError):
        raise WeightsFormatError("the weights have an unreadable safetensors header") from None
    if not isinstance(header, dict):
        raise WeightsFormatError("the weights have a malformed safetensors header")
    base, body = 8 + n, view.nbytes - 8 - n
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = getattr(torch, _DTYPES[info["dtype"]])
            shape = [int(s) for s in info["shape"]]
            start, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise WeightsFormatError(f"tensor {name!r}: a dtype this reader knows ({', '.join(_DTYPES)}), a shape "
                                     "and data_offsets are needed") from None
        itemsize = torch.empty((), dtype=dtype).element_size()
        count = math.prod(shape)
        if not 0 <= start <= end <= body or end - start != count * itemsize or min(shape, default=0) < 0:
            raise WeightsFormatError(f"tensor {name!r} does not fit the file (offsets {start}..{end} of {body} "
                                     f"bytes for {count} x {itemsize}-byte values)")
        if count == 0:
            tensors[name] = torch.empty(shape, dtype=dtype)
        else:
            tensors[name] = torch.frombuffer(view, dtype=dtype, count=count, offset=base + start).view(shape)
    return tensors
