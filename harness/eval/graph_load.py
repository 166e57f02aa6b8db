"""Build an exported forward in the harness's process, bound it, and run it on the evaluation's device.

Building goes through torch's own deserializer, given a program the check (`check.py`) passed, with node
metadata dropped (stack traces and module paths are the method's text) and every device in it set to the
evaluation's device (the method exported wherever its model lived). The weights come from the snapshot's
safetensors file and the constants from the graph's own; each must have exactly the shape the graph
declares, and is cast to the dtype it declares (a bf16 snapshot runs as a float32 model, as the worker
path loads it).

Before the first real batch, fake tensors are propagated through the graph (no memory, no compute): the
true size of every intermediate and the forward's work, whatever the program's metadata claimed. Work is
the FLOPs of its matrix products (torch's counter) plus `ELEMENT_COST` for every element any operator
writes: the counter sees no elementwise operator, and a chain of ten thousand `sin`s costs as much as a
large matrix product. A graph whose intermediates pass the element bound or whose work per batch passes `FLOP_FACTOR`
times a dense forward of its parameters is refused: it would hold the harness's memory or time, which
in-process evaluation cannot take back by killing a worker. Between batches the snapshot's time limit is
checked as well (`GraphForward.deadline`), as a worker's is.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
import types
import typing
from dataclasses import dataclass

import torch

from harness.eval.graph_check import GraphRefused, ProgramSummary, check_program, parse_program

FLOP_FACTOR = 32  # x (2 x parameters x tokens): attention at T/(6 d) of the dense part fits up to T = 190 d
ELEMENT_FACTOR = 16  # x (tokens x the widest weight dimension): logits, an MLP's hidden activations
# What one written element costs, in FLOPs of a matrix product: an elementwise operator is bound by memory
# (an H100 does ~300 bf16 FLOPs in the time it moves a byte; a CPU core ~30), so counting it as one FLOP
# would let a graph of elementwise chains take ~100 times the time the FLOP bound means. q0's GPTs write
# 0.2 to 1.4 elements per 100 FLOPs, so at this cost their work is at most twice their FLOPs.
ELEMENT_COST = 64


@dataclass(frozen=True)
class GraphBounds:
    """What one forward of the graph was measured to need, from fake tensors."""

    flops: int  # of matrix products and attention (torch's FlopCounterMode)
    elements: int  # written by every operator, once each: the work the FLOP counter does not see
    largest_elements: int
    parameters: int
    widest: int  # the largest dimension of any weight or constant (the vocabulary, an MLP's width)
    largest_weight: int


def _prepared(program: dict, device: torch.device) -> dict:
    """The program (parsed for this build alone, so changed in place) with its node metadata dropped and
    every device set to `device`."""
    target = {"type": device.type, "index": device.index}

    def walk(value):
        if isinstance(value, dict):
            for key, item in value.items():
                if key in ("as_device", "device") and isinstance(item, dict) and "type" in item:
                    value[key] = dict(target)
                else:
                    walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    graph = program["graph_module"]["graph"]
    for node in graph["nodes"]:
        node["metadata"] = {}
    walk(graph)
    program["graph_module"]["metadata"] = {}
    program["guards_code"] = []
    return program


def _deserialize(program: dict, state: dict[str, torch.Tensor], constants: dict[str, torch.Tensor]):
    from torch._export.serde import schema
    from torch._export.serde.serialize import ExportedProgramDeserializer

    serialized = _schema_value(schema.ExportedProgram, program)  # (the parsed JSON: not dumped and re-read)
    return ExportedProgramDeserializer().deserialize(serialized, state, constants)


@functools.cache
def _field_types(cls) -> dict:
    from torch._export.serde import schema

    return typing.get_type_hints(cls, globalns=vars(schema))


def _schema_value(cls, data):
    """The parsed program as torch's schema dataclasses: what torch's own `_dict_to_dataclass` builds, with
    each class's field types resolved once rather than once per node (there, resolving them was three
    quarters of building a small model's program: 0.2 of 0.28 s)."""
    from torch._export.serde import schema
    from torch._export.serde.union import _Union

    if isinstance(cls, typing.ForwardRef):
        cls = cls.__forward_arg__
    if isinstance(cls, str):
        resolved = getattr(schema, cls, None)
        if resolved is None:
            raise GraphRefused(f"the program names an unknown schema type {cls!r}")
        cls = resolved
    origin = typing.get_origin(cls)
    if origin is typing.Annotated:
        return _schema_value(cls.__origin__, data)
    if origin in (typing.Union, types.UnionType) and type(None) in typing.get_args(cls):
        if data is None:
            return None
        present = [arg for arg in typing.get_args(cls) if arg is not type(None)]
        return _schema_value(present[0], data)
    if isinstance(cls, type) and issubclass(cls, _Union):
        if not isinstance(data, dict) or len(data) != 1:
            raise GraphRefused(f"the program has a malformed {cls.__name__} (one field expected)")
        (name, value), = data.items()
        types_ = _field_types(cls)
        if name not in types_:
            raise GraphRefused(f"the program's {cls.__name__} has no field {name!r}")
        return cls.create(**{name: _schema_value(types_[name], value)})
    if dataclasses.is_dataclass(cls):
        if not isinstance(data, dict):
            raise GraphRefused(f"the program has a malformed {cls.__name__} (an object expected)")
        types_ = _field_types(cls)
        return cls(**{f.name: _schema_value(types_[f.name], data[f.name]) for f in dataclasses.fields(cls)
                      if f.name in data})  # (keys the schema does not know are ignored, as torch does)
    if isinstance(data, list):
        if not data:
            return data
        item = typing.get_args(cls)[0]
        return [_schema_value(item, value) for value in data]
    if isinstance(data, dict):
        item = typing.get_args(cls)[1]
        return {key: _schema_value(item, value) for key, value in data.items()}
    if cls is float:
        return float(data)
    return data


def _serialized_dtype(code) -> torch.dtype:
    from torch._export.serde.serialize import _SERIALIZE_TO_TORCH_DTYPE
    from torch._export.serde.schema import ScalarType

    try:
        return _SERIALIZE_TO_TORCH_DTYPE[ScalarType(code)]
    except (ValueError, KeyError):
        raise GraphRefused(f"a tensor of an unknown dtype ({code!r})") from None


class GraphForward:
    """`model(idx) -> logits` from an exported graph, run by the harness. It has no state: every call is
    the same pure function of the weights and the input."""

    pipelined = False
    training = False
    deadline: float | None = None  # time.monotonic() past which no further batch starts (the snapshot's limit)

    def __init__(self, module, arguments: list, input_at: int, input_shape: tuple[int, ...], device: torch.device,
                 autocast: str | None, bounds: GraphBounds, summary: ProgramSummary):
        self._module = module
        self._arguments = arguments
        self._input_at = input_at
        self.input_shape = input_shape
        self.batch_size = input_shape[0]
        self.device = device
        self.autocast = autocast
        self.bounds = bounds
        self.summary = summary

    def eval(self) -> "GraphForward":
        return self

    def train(self, mode: bool = True) -> "GraphForward":
        return self

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits for `inputs` [n, seq_len]: run in batches of the exported shape, the last one filled with
        copies of its last row (dropped from the result), so every call has one shape."""
        batch, steps = self.input_shape
        if inputs.ndim != 2 or inputs.shape[1] != steps or inputs.shape[0] < 1:
            raise GraphRefused(f"the graph was exported for inputs [n, {steps}], given {list(inputs.shape)}")
        # A copy of its own: the caller's tokens may be a view whose other half is the targets it is scored
        # against, and nothing the graph does may reach them (the check refuses writes; this makes sure).
        inputs = inputs.to(self.device, torch.long, copy=True)
        outputs = []
        for start in range(0, inputs.shape[0], batch):
            part = inputs[start:start + batch]
            kept = part.shape[0]
            if kept < batch:
                part = torch.cat([part, part[-1:].expand(batch - kept, steps)])
            outputs.append(self._run(part)[:kept])
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)

    def _run(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.deadline is not None and time.monotonic() > self.deadline:
            from harness.eval.remote_model import InvalidSnapshot

            raise InvalidSnapshot("the graph's forward passes ran past the snapshot's time limit")
        arguments = list(self._arguments)
        arguments[self._input_at] = inputs
        with torch.no_grad(), _autocast(self.device, self.autocast):
            out = self._module(*arguments)
        out = out[0] if isinstance(out, (tuple, list)) else out
        if not isinstance(out, torch.Tensor) or out.ndim != 3 or tuple(out.shape[:2]) != self.input_shape:
            raise GraphRefused(f"the graph returned {tuple(getattr(out, 'shape', ()))} for inputs {list(self.input_shape)}; "
                               "expected logits [batch, time, vocab]")
        return out


def _autocast(device: torch.device, autocast: str | None):
    import contextlib

    if autocast is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, autocast))


class GraphTemplate:
    """A checked, built and bounded graph, without its weights: every snapshot of one architecture shares
    the program (the same bytes), so it is built and measured once per evaluation and bound to each
    snapshot's weights (`bind`), which costs a copy of the weights to the device and nothing else."""

    def __init__(self, module, order: list[tuple[str, str]], metas: dict, summary: ProgramSummary,
                 bounds: GraphBounds, device: torch.device, autocast: str | None):
        self.module, self.order, self.metas = module, order, metas
        self.summary, self.bounds, self.device, self.autocast = summary, bounds, device, autocast

    def bind(self, weights: dict[str, torch.Tensor], constants: dict[str, torch.Tensor]) -> GraphForward:
        arguments, input_at = [], -1
        for kind, name in self.order:
            if kind == "input":
                input_at = len(arguments)
                arguments.append(None)
            else:
                arguments.append(_tensor(kind, name, self.metas[name], weights, constants, self.device))
        return GraphForward(self.module, arguments, input_at, self.summary.input_shape, self.device, self.autocast,
                            self.bounds, self.summary)


def _tensor(kind: str, name: str, meta: dict, weights: dict, constants: dict, device: torch.device) -> torch.Tensor:
    """The weight or constant `name` as the graph declares it (shape checked, cast to its dtype, on `device`)."""
    source = constants if kind == "constant" else weights
    if name not in source:
        where = "the graph's constants" if kind == "constant" else "the snapshot's weights"
        raise GraphRefused(f"the graph takes {kind} {name!r}, which is not in {where}")
    shape = tuple(int(s["as_int"]) for s in meta["sizes"])
    tensor = source[name]
    if tuple(tensor.shape) != shape:
        raise GraphRefused(f"{kind} {name!r} has shape {list(tensor.shape)}, the graph takes {list(shape)}")
    tensor = tensor.to(device=device, dtype=_serialized_dtype(meta["dtype"]))
    return torch.nn.Parameter(tensor, requires_grad=False) if kind == "parameter" else tensor


def build_graph(data: bytes, weights: dict[str, torch.Tensor], constants: dict[str, torch.Tensor],
                device: str | torch.device = "cpu", autocast: str | None = None) -> GraphTemplate:
    """Check, build and bound an exported program (GraphRefused says why one cannot be run). `weights`
    and `constants` are one snapshot's: the deserializer checks the program against real tensors."""
    device = torch.device(device)
    program = parse_program(data)
    summary = check_program(program)
    program = _prepared(program, device)
    tensor_metas = program["graph_module"]["graph"]["tensor_values"]
    metas = {}
    for spec in program["graph_module"]["signature"]["input_specs"]:
        (kind, value), = spec.items()
        if kind != "user_input":
            name = value.get("parameter_name") or value.get("buffer_name") or value.get("tensor_constant_name")
            metas[name] = tensor_metas[value["arg"]["name"]]
    state, consts = {}, {}
    for kind, name in summary.inputs:
        if kind != "input":
            (consts if kind == "constant" else state)[name] = _tensor(kind, name, metas[name], weights, constants,
                                                                      device)
    try:
        exported = _deserialize(program, state, consts)
    except GraphRefused:
        raise
    except Exception as exc:  # the deserializer's own refusals: malformed, inconsistent, unknown operators
        raise GraphRefused(f"the exported program could not be built ({type(exc).__name__}: {str(exc)[:300]})") from None
    module = _without_copies(exported.graph_module)
    order, arguments, input_at = [], [], -1
    for spec in exported.graph_signature.input_specs:
        kind = spec.kind.name
        if kind == "USER_INPUT":
            input_at = len(arguments)
            order.append(("input", ""))
            arguments.append(None)
        elif kind == "PARAMETER" or (kind == "BUFFER" and spec.persistent is not False):
            order.append(("parameter" if kind == "PARAMETER" else "buffer", spec.target))
            arguments.append(exported.state_dict[spec.target])
        else:
            order.append(("constant", spec.target))
            arguments.append(exported.constants[spec.target])
    bounds = measure(module, arguments, input_at, summary.input_shape, device)
    _check_bounds(bounds, summary.input_shape)
    return GraphTemplate(module, order, metas, summary, bounds, device, autocast)


def _without_copies(module):
    """The module without the nodes that cost time and compute nothing the harness can observe: a copy in
    the same layout (what `dropout` in eval mode and some views export as) and export's own metadata
    asserts (the harness casts every weight to its declared dtype itself).

    A copy is only observable if something writes to one side of it, and the check refused every graph
    that writes; copies the graph returns are kept (the caller may own its logits). A copy into another
    layout (`memory_format=contiguous_format`) is kept: what follows may depend on its strides. Dropping
    these made the `cpu_small` GPT's forward 2 to 3% faster on one CPU thread, even with the eager model.
    """
    graph = module.graph
    outputs = {id(arg) for node in graph.nodes if node.op == "output" for arg in _flat(node.args)}
    changed = False
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        if node.target is torch.ops.aten._assert_tensor_metadata.default and not node.users:
            graph.erase_node(node)
            changed = True
        elif (node.target is torch.ops.aten.clone.default and id(node) not in outputs
              and node.kwargs.get("memory_format", torch.preserve_format) is torch.preserve_format):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
            changed = True
    if changed:
        graph.lint()
        module.recompile()
    return module


def _flat(value):
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from _flat(item)
    else:
        yield value


def load_graph(data: bytes, weights: dict[str, torch.Tensor], constants: dict[str, torch.Tensor],
               device: str | torch.device = "cpu", autocast: str | None = None) -> GraphForward:
    """The checked, bounded forward of an exported program bound to these weights."""
    return build_graph(data, weights, constants, device, autocast).bind(weights, constants)


def measure(module, arguments: list, input_at: int, input_shape: tuple[int, ...], device: torch.device) -> GraphBounds:
    """FLOPs and the largest intermediate of one forward, from fake tensors (nothing is computed)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp
    from torch.utils.flop_counter import FlopCounterMode

    mode = FakeTensorMode(allow_non_fake_inputs=False)
    fake = [mode.from_tensor(a) if a is not None else None for a in arguments]
    with mode:
        fake[input_at] = torch.zeros(input_shape, dtype=torch.long, device=device)
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            FakeTensorProp(module, mode).propagate(*fake)
    except GraphRefused:
        raise
    except Exception as exc:
        raise GraphRefused(f"the graph does not run on its declared shapes ({type(exc).__name__}: "
                           f"{str(exc)[:300]})") from None
    largest = written = 0
    for node in module.graph.nodes:
        for value in _tensors(node.meta.get("val")):
            largest = max(largest, value.numel())
            if node.op == "call_function":
                written += value.numel()
    weights = [a for i, a in enumerate(arguments) if i != input_at and a is not None]
    return GraphBounds(int(counter.get_total_flops()), int(written), int(largest), sum(a.numel() for a in weights),
                       max((max(a.shape, default=1) for a in weights), default=1),
                       max((a.numel() for a in weights), default=1))


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


def _check_bounds(bounds: GraphBounds, input_shape: tuple[int, ...]) -> None:
    tokens = math.prod(input_shape)
    element_limit = ELEMENT_FACTOR * max(tokens * bounds.widest, bounds.largest_weight, 1 << 20)
    if bounds.largest_elements > element_limit:  # (first: one such intermediate is also too much work)
        raise GraphRefused(f"an intermediate of the graph holds {bounds.largest_elements:,} elements, over the "
                           f"bound of {int(element_limit):,} for its size")
    flop_limit = FLOP_FACTOR * 2 * max(bounds.parameters, 1) * tokens
    if bounds.flops + ELEMENT_COST * bounds.elements > flop_limit:
        raise GraphRefused(f"one forward takes {bounds.flops:.3g} FLOPs and writes {bounds.elements:.3g} elements "
                           f"(at {ELEMENT_COST} FLOPs each), "
                           f"over {FLOP_FACTOR} times a dense forward of its {bounds.parameters:,} parameters on "
                           f"{tokens:,} tokens ({flop_limit:.3g})")


__all__ = ["FLOP_FACTOR", "GraphBounds", "GraphForward", "GraphTemplate", "build_graph", "load_graph", "measure"]
