"""The tensors of a safetensors buffer as views of it, without copying a byte.

The evaluation worker receives a snapshot's weights as one message payload. ``safetensors.torch.load``
wants ``bytes`` (a copy of the payload) and returns tensors of its own (a second copy); for the 1.8B preset
that was three host copies of 3.6 GB before the model's own. Views of the payload leave one: the
payload itself, from which ``load_state_dict`` copies each tensor into the model on its device.

The header is checked by the same rules as at the data server's intake (harness/formats/safetensors_header.py:
offsets inside the buffer, sizes that match shape and dtype); a buffer that fails gets a clear error, never a
view past its end.
"""

from __future__ import annotations

from harness.formats.safetensors_header import SafetensorsError, header_of_buffer

_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
           "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


class WeightsFormatError(ValueError):
    """The buffer is not a safetensors file this reader can view."""


def tensor_views(buffer) -> dict:
    """``{name: tensor}`` viewing ``buffer`` (a writable, C-contiguous buffer that must outlive them)."""
    import torch

    view = memoryview(buffer).cast("B")
    try:
        header = header_of_buffer(view)
    except SafetensorsError as exc:
        raise WeightsFormatError(f"the weights: {exc}") from None
    tensors = {}
    for entry in header.tensors:
        if entry.dtype not in _DTYPES:
            raise WeightsFormatError(f"tensor {entry.name!r}: a dtype this reader knows ({', '.join(_DTYPES)}) is "
                                     f"needed, not {entry.dtype!r}")
        dtype = getattr(torch, _DTYPES[entry.dtype])
        if entry.elements == 0:
            tensors[entry.name] = torch.empty(entry.shape, dtype=dtype)
        else:
            tensors[entry.name] = torch.frombuffer(view, dtype=dtype, count=entry.elements,
                                                   offset=header.body_start + entry.start).view(entry.shape)
    return tensors
