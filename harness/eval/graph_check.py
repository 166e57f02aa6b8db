"""The program check: what an exported graph may contain before the harness builds it.

The serialized program is JSON written by the method's process, so every field is the method's choice.
Some fields would run code if taken as they are: `guards_code` is Python source that `ExportedProgram.
module()` compiles, and symbolic sizes and range constraints are sympy expressions that the deserializer
parses with `sympify` (an `eval`). The harness never calls `module()` (it runs the graph module itself)
and accepts only concrete integer sizes, so neither is ever parsed; the check refuses a program that has
them rather than trusting them to be ignored.

Operators are matched by name against `ALLOWED_OPS`, ATen operators that compute a tensor from tensors
and numbers: nothing that reads a file (`from_file`), the clock or global state, no custom or
higher-order operators. Names alone do not say what an overload does (`max.dim_max` writes into its
`max=` arguments, though its name has no "out"), so each overload's own schema is read too
(:func:`check_operator`): one that writes to any argument is refused, and one that draws random numbers
only passes where its arguments make it the identity (dropout with `train=False`, attention with
`dropout_p=0`). The program must name the ATen verifier, the one under which torch's deserializer
itself refuses operators that mutate. A model that needs something else is evaluated by its own code in
the sandboxed worker, and its record says so.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass

MAX_PROGRAM_BYTES = 64 << 20  # a 48-layer GPT's program is ~3 MB of JSON
MAX_NODES = 200_000

# aten operator packets (`torch.ops.aten.<name>.<overload>`): pure functions of their arguments.
ALLOWED_OPS = frozenset("""
_assert_tensor_metadata _log_softmax _softmax _to_copy _unsafe_view abs add addmm alias amax amin arange
argmax baddbmm bmm cat chunk clamp clamp_max clamp_min clone contiguous cos cumsum detach div dropout
einsum embedding eq erf exp expand expand_as eye flatten floor full full_like gather ge gelu gt index
index_select layer_norm le lerp linear log log_softmax logical_and logical_not logical_or logsumexp lt
masked_fill matmul max maximum mean min minimum mm mul narrow native_layer_norm ne neg new_ones new_zeros
ones ones_like permute pow reciprocal relu repeat reshape rms_norm round rsqrt rsub scaled_dot_product_attention
select sigmoid sign silu sin slice softmax softplus split split_with_sizes sqrt square squeeze stack sub
sum t tanh to transpose tril triu type_as unbind unflatten unsqueeze var view view_as where zeros
zeros_like
""".split())

# The argument kinds a node may carry: tensors, numbers and the few enums; never a graph (higher-order
# operators), a custom object, a symbolic value or an arbitrary string.
ALLOWED_ARGS = frozenset({"as_tensor", "as_tensors", "as_optional_tensors", "as_int", "as_ints", "as_float",
                          "as_floats", "as_bool", "as_bools", "as_scalar_type", "as_device", "as_memory_format",
                          "as_layout", "as_none", "as_string"})
ALLOWED_STRINGS = frozenset({"floor", "trunc", "none", "tanh", "mean", "sum"})  # rounding modes, gelu approximations
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,199}$")
PARAMETER_NAME = re.compile(r"^[A-Za-z0-9_]{1,200}(\.[A-Za-z0-9_]{1,200}){0,63}$")
INT64 = 5  # torch.int64 in torch._export.serde.schema.ScalarType (LONG)
TARGET = re.compile(r"^torch\.ops\.aten\.([A-Za-z0-9_]+)\.([A-Za-z0-9_]+)$")
# The verifier the deserializer applies: ATen's refuses mutating operators; another (TRAINING) lets them in.
ALLOWED_VERIFIERS = ([], ["ATEN"])
# Operators that draw random numbers, and the argument (name, value) that makes them the identity.
SEEDED_IDENTITY = {"dropout": ("train", {"as_bool": False}), "scaled_dot_product_attention": ("dropout_p", {"as_float": 0.0})}


class GraphRefused(Exception):
    """The exported program cannot be evaluated by the harness (the reason says why)."""


@dataclass(frozen=True)
class ProgramSummary:
    """What the check learned: the operators used (name -> count), the graph's one user input (its shape)
    and its parameters, buffers and constants by name, in the order the graph takes them."""

    ops: dict
    input_shape: tuple[int, ...]
    inputs: tuple[tuple[str, str], ...]  # (kind, name): parameter, buffer, constant or input


def _fail(message: str):
    raise GraphRefused(message)


def parse_program(data: bytes) -> dict:
    if len(data) > MAX_PROGRAM_BYTES:
        _fail(f"the exported program is {len(data):,} bytes (the limit is {MAX_PROGRAM_BYTES:,})")
    try:
        program = json.loads(data, parse_constant=lambda c: _fail(f"the program holds {c}"))
    except (ValueError, UnicodeDecodeError) as exc:
        _fail(f"the exported program is not JSON ({exc})")
    if not isinstance(program, dict) or not isinstance(program.get("graph_module"), dict):
        _fail("the exported program has no graph module")
    return program


def _check_arg(arg, where: str) -> None:
    if not isinstance(arg, dict) or len(arg) != 1:
        _fail(f"{where}: a malformed argument")
    (kind, value), = arg.items()
    if kind not in ALLOWED_ARGS:
        _fail(f"{where}: arguments of kind {kind!r} are not accepted (symbolic values, graphs and objects are "
              "not evaluated)")
    if kind == "as_tensor" and not (isinstance(value, dict) and NAME.match(str(value.get("name", "")))):
        _fail(f"{where}: a tensor argument must name a tensor by an identifier")
    if kind in ("as_tensors", "as_optional_tensors"):
        if not isinstance(value, list):
            _fail(f"{where}: a malformed list of tensors")
        for item in value:
            if isinstance(item, dict) and "as_none" in item:
                continue
            inner = item.get("as_tensor", item) if isinstance(item, dict) else None
            if not (isinstance(inner, dict) and NAME.match(str(inner.get("name", "")))):
                _fail(f"{where}: a tensor argument must name a tensor by an identifier")
    if kind == "as_string" and value not in ALLOWED_STRINGS:
        _fail(f"{where}: the string argument {str(value)[:40]!r} is not accepted")
    if kind in ("as_int", "as_float") and not isinstance(value, (int, float)):
        _fail(f"{where}: a malformed number")
    if kind in ("as_ints", "as_floats", "as_bools") and not (
            isinstance(value, list) and all(isinstance(v, (int, float, bool)) for v in value)):
        _fail(f"{where}: a malformed list of numbers")


def _concrete(sizes, where: str) -> tuple[int, ...]:
    if not isinstance(sizes, list) or not all(isinstance(s, dict) and set(s) == {"as_int"} for s in sizes):
        _fail(f"{where}: sizes must be concrete integers (the harness evaluates graphs of static shape)")
    return tuple(int(s["as_int"]) for s in sizes)


def check_program(program: dict) -> ProgramSummary:
    """Refuse (GraphRefused) anything but a pure, static, allow-listed forward: `model(idx) -> logits`."""
    if program.get("guards_code"):
        _fail("the program carries guard code; graphs are run without it")
    if program.get("range_constraints"):
        _fail("the program has symbolic shapes; export it at the evaluation's fixed shape")
    if program.get("verifiers", []) not in ALLOWED_VERIFIERS:
        _fail(f"the program names the verifiers {str(program.get('verifiers'))[:80]}; only ATen's is accepted "
              "(it refuses operators that mutate)")
    module = program["graph_module"]
    graph = module.get("graph")
    if not isinstance(graph, dict):
        _fail("the exported program has no graph")
    for key in ("sym_int_values", "sym_bool_values", "sym_float_values", "custom_obj_values"):
        if graph.get(key):
            _fail(f"the graph holds {key.replace('_', ' ')}; only tensors of static shape are evaluated")
    tensors = graph.get("tensor_values")
    if not isinstance(tensors, dict):
        _fail("the graph has no tensor table")
    for name, meta in tensors.items():
        if not NAME.match(name) or not isinstance(meta, dict):
            _fail(f"a tensor named {name[:40]!r}: names must be identifiers")
        _concrete(meta.get("sizes"), f"tensor {name}")
        _concrete(meta.get("strides"), f"tensor {name}")
    nodes = graph.get("nodes")
    if not isinstance(nodes, list) or len(nodes) > MAX_NODES:
        _fail(f"the graph must be a list of at most {MAX_NODES:,} nodes")
    ops: dict[str, int] = {}
    for i, node in enumerate(nodes):
        target = node.get("target") if isinstance(node, dict) else None
        match = TARGET.match(target) if isinstance(target, str) else None
        if match is None:
            _fail(f"node {i} calls {str(target)[:80]!r}: only ATen operators are evaluated")
        name, overload = match.groups()
        if name not in ALLOWED_OPS or name.endswith("_") or "out" in overload:
            _fail(f"node {i} calls {target}, which is not on the harness's list of pure operators "
                  "(harness/eval/graph_check.py)")
        if not NAME.match(str(node.get("name", ""))):
            _fail(f"node {i} is named {str(node.get('name'))[:40]!r}: names must be identifiers")
        seeded = check_operator(name, overload)
        given = {}
        for arg in node.get("inputs") or []:
            if not isinstance(arg, dict):
                _fail(f"node {i}: a malformed argument")
            _check_arg(arg.get("arg"), f"node {i} ({target})")
            given[arg.get("name")] = arg["arg"]
        if seeded:
            argument, identity = SEEDED_IDENTITY[name]
            if given.get(argument, identity) not in (identity, {"as_int": 0}):
                _fail(f"node {i} ({target}) draws random numbers ({argument}={given[argument]}): evaluation is "
                      "deterministic, so dropout must be off in the exported forward")
        for out in node.get("outputs") or []:
            _check_arg(out, f"node {i} ({target}) output")
        ops[f"{name}.{overload}"] = ops.get(f"{name}.{overload}", 0) + 1
    inputs, shape = _check_signature(module.get("signature"), tensors)
    return ProgramSummary(dict(sorted(ops.items())), shape, inputs)


@functools.cache  # (per distinct operator, not per node: a refusal raises and is not cached)
def check_operator(name: str, overload: str) -> bool:
    """Refuse an overload whose schema writes to an argument (in place, `out=`, or a `max=` like
    `max.dim_max`'s) or draws random numbers other than as `SEEDED_IDENTITY` allows; True when it is one of
    those (its arguments must then make it the identity). The schema is torch's own, not the program's."""
    import torch  # (the harness's side has it loaded already wherever a program is checked)

    packet = getattr(torch.ops.aten, name, None)
    op = getattr(packet, overload, None) if packet is not None and overload in packet.overloads() else None
    if op is None:
        _fail(f"torch.ops.aten.{name}.{overload} is not an operator of this torch")
    schema = op._schema
    if schema.is_mutable or any(a.alias_info is not None and a.alias_info.is_write for a in schema.arguments):
        _fail(f"torch.ops.aten.{name}.{overload} writes into one of its arguments: evaluation runs pure functions")
    seeded = torch.Tag.nondeterministic_seeded in op.tags
    if seeded and name not in SEEDED_IDENTITY:
        _fail(f"torch.ops.aten.{name}.{overload} draws random numbers: evaluation is deterministic")
    return seeded


def _check_signature(signature, tensors: dict) -> tuple[tuple[tuple[str, str], ...], tuple[int, ...]]:
    if not isinstance(signature, dict):
        _fail("the program has no signature")
    outputs = signature.get("output_specs")
    if not (isinstance(outputs, list) and len(outputs) == 1 and set(outputs[0]) == {"user_output"}):
        kinds = [next(iter(o), "?") for o in outputs] if isinstance(outputs, list) else outputs
        _fail(f"the graph must return one tensor and mutate nothing; its outputs are {kinds}")
    inputs, shape, users = [], (), 0
    for spec in signature.get("input_specs") or []:
        if not isinstance(spec, dict) or len(spec) != 1:
            _fail("a malformed input of the graph")
        (kind, value), = spec.items()
        arg = value.get("arg") if isinstance(value, dict) else None
        if kind == "user_input":
            tensor = arg.get("as_tensor") if isinstance(arg, dict) else None
            name = str((tensor or {}).get("name", ""))
            if not NAME.match(name) or name not in tensors:
                _fail("the graph's input must be one tensor")
            meta = tensors[name]
            shape = _concrete(meta.get("sizes"), "the input")
            if len(shape) != 2 or meta.get("dtype") != INT64:
                _fail(f"the graph's input must be int64 token ids [batch, time], got sizes {shape}")
            users += 1
            inputs.append(("input", name))
        elif kind in ("parameter", "buffer", "tensor_constant"):
            target = value.get({"parameter": "parameter_name", "buffer": "buffer_name",
                                "tensor_constant": "tensor_constant_name"}[kind])
            if not (isinstance(target, str) and PARAMETER_NAME.match(target)):
                _fail(f"a {kind} named {str(target)[:60]!r}: names must be dotted identifiers")
            if not (isinstance(arg, dict) and NAME.match(str(arg.get("name", "")))):
                _fail(f"the {kind} {target}: a malformed placeholder")
            persistent = value.get("persistent", True) if kind == "buffer" else True
            inputs.append(("constant" if kind == "tensor_constant" or not persistent else kind, target))
        else:
            _fail(f"the graph takes an input of kind {kind!r}; only weights, constants and the token ids are given")
    if users != 1:
        _fail(f"the graph must take exactly one input, the token ids; it takes {users}")
    return tuple(inputs), shape


__all__ = ["ALLOWED_OPS", "GraphRefused", "MAX_PROGRAM_BYTES", "ProgramSummary", "check_program", "parse_program"]
