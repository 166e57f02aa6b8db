"""The method's side: export a model's forward pass, once per architecture, for `ctx.save_snapshot`.

This runs in the method's process (it traces the method's module), never in the harness's. The export
is `torch.export` at the evaluation's fixed shape [batch, seq_len] in eval mode, functionalised
(`run_decompositions({})`: in-place updates of intermediates become plain operators, a buffer update
becomes an output the harness refuses), serialized as JSON without weights: the weights travel in the
snapshot's safetensors file, and the tensors the graph holds besides them (non-persistent buffers such as
rotary tables, tensor literals) in a small safetensors file of their own.

Tracing a 48-layer model takes seconds, so the graph is exported once per build spec and reused for
every later snapshot of it; the constants are read again from the module each time (a non-persistent
buffer may change between snapshots).
"""

from __future__ import annotations

import json
import warnings

import torch

EXPORT_STRICT = False  # non-strict tracing follows the module's Python as it runs: what most models need


def unwrap(module):
    """The plain module inside torch.compile's and DDP's wrappers."""
    for _ in range(8):
        inner = getattr(module, "_orig_mod", None) or (getattr(module, "module", None)
                                                        if type(module).__name__ in ("DistributedDataParallel",
                                                                                     "FullyShardedDataParallel")
                                                        else None)
        if inner is None:
            return module
        module = inner
    return module


def _device_of(module: torch.nn.Module) -> torch.device:
    for tensor in list(module.parameters()) + list(module.buffers()):
        return tensor.device
    return torch.device("cpu")


class GraphExporter:
    """Exports and remembers one graph per build spec (a method process keeps one of these)."""

    def __init__(self) -> None:
        self._programs: dict[str, tuple[bytes, dict[str, torch.Tensor]]] = {}

    def export(self, module, build_spec: dict, batch: int, seq_len: int) -> tuple[bytes, dict[str, torch.Tensor]]:
        """(the program as JSON bytes, its constants on the CPU) for `module`'s forward on [batch, seq_len]."""
        module = unwrap(module)
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"only a torch.nn.Module can be exported, got {type(module).__name__}")
        key = json.dumps([build_spec, batch, seq_len, type(module).__qualname__], sort_keys=True)
        if key not in self._programs:
            self._programs[key] = _export(module, batch, seq_len)
        program, constants = self._programs[key]
        buffers = dict(module.named_buffers())
        fresh = {name: (buffers[name] if name in buffers else value).detach().to("cpu").contiguous()
                 for name, value in constants.items()}
        return program, fresh


def _export(module: torch.nn.Module, batch: int, seq_len: int) -> tuple[bytes, dict[str, torch.Tensor]]:
    from torch._export.serde.serialize import serialize

    example = torch.zeros(batch, seq_len, dtype=torch.long, device=_device_of(module))
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # torch.export's own pytree code trips its deprecation of LeafSpec (torch 2.13): not the method's
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*", category=FutureWarning)
            program = torch.export.export(module, (example,), strict=EXPORT_STRICT).run_decompositions({})
            artifact = serialize(program, serialize_state_dict=False, serialize_constants=False,
                                 serialize_example_inputs=False)
    finally:
        module.train(was_training)
    constants = {name: value.detach().to("cpu").contiguous() for name, value in program.constants.items()
                 if isinstance(value, torch.Tensor)}
    return artifact.exported_program, constants


__all__ = ["GraphExporter", "unwrap"]
