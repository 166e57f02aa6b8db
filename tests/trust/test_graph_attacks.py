"""Forged exported graphs. Each test is an attack that must be refused or scored at its honest
loss. The program a method hands to ctx.save_snapshot is JSON it fully controls; these forge it by hand
(the harness's exporter is only the honest method's way to write one)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from harness.eval.graph_check import GraphRefused, check_program, parse_program
from harness.eval.graph_load import load_graph
from tests.graphs.conftest import bigram, export, with_graph  # noqa: F401 - bigram: the graph tests' fixture

VOCAB, SEQ, BATCH = 512, 128, 16


# ---------------------------------------------------------------- helpers: forging nodes by hand

def _meta(like: dict, sizes: list[int], dtype: int | None = None) -> dict:
    meta = copy.deepcopy(like)
    meta["sizes"] = [{"as_int": s} for s in sizes]
    strides, acc = [], 1
    for s in reversed(sizes):
        strides.insert(0, acc)
        acc *= s
    meta["strides"] = [{"as_int": s} for s in strides]
    if dtype is not None:
        meta["dtype"] = dtype
    return meta


def _arg(name: str, kind: int = 1, **arg) -> dict:
    (key, value), = arg.items()
    return {"name": name, "arg": {key: value}, "kind": kind}


def _node(target: str, name: str, inputs: list, outputs: list) -> dict:
    return {"target": target, "name": name, "inputs": inputs, "outputs": outputs, "metadata": {},
            "is_hop_single_tensor_return": None}


def _write_through_max(source: str, values_into: str, indices_into: str, name: str, outputs: tuple[str, str]
                       ) -> list[dict]:
    """Two nodes that copy `source` into two tensors the graph was given: `max.dim_max` over a new leading
    dimension of size one is the identity, and it writes its `max=` and `max_values=` arguments in place."""
    v, i = outputs
    return [
        _node("torch.ops.aten.unsqueeze.default", "st",
              [_arg("self", as_tensor={"name": source}), _arg("dim", as_int=0)], [{"as_tensor": {"name": "st"}}]),
        _node("torch.ops.aten.max.dim_max", name,
              [_arg("self", as_tensor={"name": "st"}), _arg("dim", as_int=0),
               _arg("max", 2, as_tensor={"name": values_into}),
               _arg("max_values", 2, as_tensor={"name": indices_into})],
              [{"as_tensors": [{"name": v}, {"name": i}]}]),
    ]


class _Forged:
    """Stands in for GraphExporter in tests.graphs.conftest.with_graph: hands over a forged program."""

    def __init__(self, program: bytes, constants: dict):
        self.program, self.constants = program, constants

    def export(self, *_):
        return self.program, self.constants


def _evaluate(tmp_path, data, model, program: bytes | None, constants: dict | None, tag: str) -> dict:
    from harness.eval.evaluation import EvaluationOptions, evaluate_run
    from harness.eval.probes import ProbeSettings
    from harness.confined.graph_export import GraphExporter

    run = tmp_path / f"run-{tag}"
    exporter = GraphExporter() if program is None else _Forged(program, constants)
    with_graph(run, tag, model, {"seq_len": SEQ, "vocab_size": VOCAB}, 1.0, exporter, builder="nowhere:build",
               batch=BATCH)
    result = evaluate_run(run, data, SEQ, None, None, EvaluationOptions(
        batch_size=BATCH, progress=False, builder_roots=(), probes=ProbeSettings(seed=0), fork_server=False))
    if not result["snapshots"]:  # refused, and its own code (a builder that does not exist) could not run it
        assert result["invalid_snapshots"], result
        return {"evaluated_by": None, "val_loss": None, "invalid": result["invalid_snapshots"]}
    return result["snapshots"][0]


def _bigram_log_table(data) -> torch.Tensor:
    """log P(next | current) fitted on the training split (add-one smoothing): an honest bigram model."""
    from harness.data.store import TokenStore

    tokens = np.asarray(TokenStore.open(data, "train").tokens, dtype=np.int64)
    counts = np.ones((VOCAB, VOCAB))
    np.add.at(counts, (tokens[:-1], tokens[1:]), 1)
    return torch.from_numpy(np.log(counts / counts.sum(1, keepdims=True))).float()


class Bigram(torch.nn.Module):
    def __init__(self, table: torch.Tensor | None = None):
        super().__init__()
        self.table = torch.nn.Embedding(VOCAB, VOCAB)
        if table is not None:
            with torch.no_grad():
                self.table.weight.copy_(table)

    def forward(self, idx):
        return self.table(idx)


# ---------------------------------------------------------------- writes, peeks, randomness

def _stateful_program(verifier: str) -> tuple[torch.nn.Module, bytes, dict]:
    """A bigram plus a buffer `mem` added to the logits, then overwritten by `aten.max.dim_max(..., max=mem)`
    with the token counts of this batch: a memory kept between calls. `max.dim_max` is an `out=` overload
    whose name does not contain "out"; the program says its verifier is "TRAINING", which lets the
    deserializer accept a mutable operator."""

    class Remembers(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.table = torch.nn.Embedding(64, 64)
            self.register_buffer("mem", torch.zeros(64))
            self.register_buffer("memi", torch.zeros(64, dtype=torch.long))

        def forward(self, idx):
            return self.table(idx) + self.mem

    torch.manual_seed(0)
    model = Remembers().eval()
    data, constants = export(model)
    program = json.loads(data)
    graph = program["graph_module"]["graph"]
    metas = graph["tensor_values"]
    metas["cnt"] = _meta(metas["b_mem"], [64])
    metas["st"] = _meta(metas["b_mem"], [1, 64])
    metas["upd_v"] = _meta(metas["b_mem"], [64])
    metas["upd_i"] = _meta(metas["b_memi"], [64])
    graph["nodes"] += [
        _node("torch.ops.aten.sum.dim_IntList", "cnt",
              [_arg("self", as_tensor={"name": "embedding"}), _arg("dim", as_ints=[0, 1])], [{"as_tensor": {"name": "cnt"}}]),
        *_write_through_max("cnt", "b_mem", "b_memi", "upd", ("upd_v", "upd_i")),
    ]
    program["verifiers"] = [verifier]
    return model, json.dumps(program).encode(), constants


def test_the_aten_verifier_refuses_a_mutating_overload_whose_name_lacks_out():
    """Guarantee kept: with the program's own verifier (ATEN) torch refuses `max.dim_max`."""
    model, data, constants = _stateful_program("ATEN")
    with pytest.raises(GraphRefused):
        load_graph(data, dict(model.state_dict()), constants)


@pytest.mark.parametrize("verifiers", [[], ["ATEN"]])
def test_the_check_reads_each_overloads_schema_not_its_name(verifiers):
    """Without a verifier that refuses mutation (an empty list builds unverified), the harness's own check
    must: `max.dim_max` writes into its `max=` argument, so torch's schema marks it mutable."""
    _, data, _ = _stateful_program("ATEN")
    program = json.loads(data)
    program["verifiers"] = verifiers
    with pytest.raises(GraphRefused, match="writes into one of its arguments"):
        check_program(parse_program(json.dumps(program).encode()))


def test_a_graph_cannot_keep_a_memory_between_calls():
    """`"verifiers": ["TRAINING"]` (under which torch's deserializer builds mutating operators) plus
    `aten.max.dim_max`, an out= overload with no "out" in its name: a graph that writes into its own
    buffer would give other logits for the same input on the next call. The verifier is refused."""
    model, data, constants = _stateful_program("TRAINING")
    try:
        graph = load_graph(data, dict(model.state_dict()), constants)
    except GraphRefused:
        return  # refused: the guarantee holds
    idx = torch.randint(0, 64, (4, 32))
    first, second = graph(idx), graph(idx)
    assert torch.equal(first, second), "the graph is not a pure function: it kept a memory between calls"


def _target_writing_program(model: torch.nn.Module) -> tuple[bytes, dict]:
    """The honest bigram's graph plus: write argmax(logits[:, t]) into idx[:, t + 1] through
    `aten.max.dim_max(..., max=idx)`. The harness hands the graph `tokens[:, :-1]`, a view sharing its
    storage with the targets `tokens[:, 1:]` it scores against, so the targets become the predictions."""
    data, constants = export(model, BATCH, SEQ)
    program = json.loads(data)
    graph = program["graph_module"]["graph"]
    metas = graph["tensor_values"]
    long_meta = metas["idx"]
    metas["pred"] = _meta(long_meta, [BATCH, SEQ])
    metas["first"] = _meta(long_meta, [BATCH, 1])
    metas["head"] = _meta(long_meta, [BATCH, SEQ - 1])
    metas["shifted"] = _meta(long_meta, [BATCH, SEQ])
    metas["st"] = _meta(long_meta, [1, BATCH, SEQ])
    metas["w_v"] = _meta(long_meta, [BATCH, SEQ])
    metas["w_i"] = _meta(long_meta, [BATCH, SEQ])
    metas["b_scratch"] = _meta(long_meta, [BATCH, SEQ])
    graph["inputs"].insert(1, {"as_tensor": {"name": "b_scratch"}})
    program["graph_module"]["signature"]["input_specs"].insert(
        1, {"buffer": {"arg": {"name": "b_scratch"}, "buffer_name": "scratch", "persistent": True}})
    logits = graph["nodes"][0]["outputs"][0]["as_tensor"]["name"]
    graph["nodes"] += [
        _node("torch.ops.aten.argmax.default", "pred",
              [_arg("self", as_tensor={"name": logits}), _arg("dim", as_int=-1)], [{"as_tensor": {"name": "pred"}}]),
        _node("torch.ops.aten.slice.Tensor", "first",
              [_arg("self", as_tensor={"name": "idx"}), _arg("dim", as_int=1), _arg("start", as_int=0),
               _arg("end", as_int=1)], [{"as_tensor": {"name": "first"}}]),
        _node("torch.ops.aten.slice.Tensor", "head",
              [_arg("self", as_tensor={"name": "pred"}), _arg("dim", as_int=1), _arg("start", as_int=0),
               _arg("end", as_int=SEQ - 1)], [{"as_tensor": {"name": "head"}}]),
        _node("torch.ops.aten.cat.default", "shifted",
              [_arg("tensors", as_tensors=[{"name": "first"}, {"name": "head"}]), _arg("dim", as_int=1)],
              [{"as_tensor": {"name": "shifted"}}]),
        *_write_through_max("shifted", "idx", "b_scratch", "write", ("w_v", "w_i")),
    ]
    program["verifiers"] = ["TRAINING"]
    return json.dumps(program).encode(), constants


def test_a_graph_cannot_rewrite_the_targets_it_is_scored_against(tmp_path, synthetic_data):
    """The tokens the harness scores are one tensor: the graph's input `tokens[:, :-1]` and the targets
    `tokens[:, 1:]` are views of it. A forged program that writes its predictions into its input would
    score them as targets (1.80 against an honest 2.87 before the fix); it is refused, and the graph is
    handed a copy anyway."""

    class WithScratch(Bigram):
        def __init__(self, table):
            super().__init__(table)
            self.register_buffer("scratch", torch.zeros(BATCH, SEQ, dtype=torch.long))

    model = WithScratch(_bigram_log_table(synthetic_data)).eval()
    honest = _evaluate(tmp_path, synthetic_data, model, None, None, "honest")
    assert honest["evaluated_by"] == "graph" and honest.get("val_loss") is not None
    program, constants = _target_writing_program(Bigram(_bigram_log_table(synthetic_data)).eval())
    forged = _evaluate(tmp_path, synthetic_data, model, program, constants, "forged")
    scored = forged.get("val_loss")
    assert forged["evaluated_by"] != "graph" or scored is None or scored >= honest["val_loss"] - 1e-6, (
        f"a graph that writes into its input scored {scored:.4f} against its honest {honest['val_loss']:.4f}")


class PeeksAtTheNextRow(torch.nn.Module):
    """An honest bigram, except at the last position of each row: there it adds log P(next row's first
    token | candidate). In scoring, the next row of a batch is the next stretch of the same text, so its
    first token is the one right after this row's last target: P(x_T | x_T-1, x_T+1). The causality probe
    never compares the last position (cuts are at most T - 2), and the graph path skips the
    statelessness probe, the one that catches peeking at neighbouring rows (harness/eval/probes.py)."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.nn.Embedding(VOCAB, VOCAB)
        with torch.no_grad():
            self.table.weight.copy_(table)

    def forward(self, idx):
        logits = self.table(idx)
        following = idx[1:, 0]  # [B - 1]
        bonus = self.table.weight.t()[following]  # [B - 1, V]: log P(following | v)
        bonus = torch.cat([bonus, torch.zeros_like(bonus[:1])], 0)
        last = logits[:, -1] + bonus
        return torch.cat([logits[:, :-1], last[:, None]], 1)


def test_a_graph_cannot_peek_at_the_next_row_of_its_batch(tmp_path, synthetic_data):
    """An exported (not forged) forward that reads the next row of its batch: every operator is on the list
    and the function is pure, but it scored 0.01 nats below its honest loss while the graph path skipped
    the statelessness probe. Its windows scored again beside others now give other log-probabilities."""
    table = _bigram_log_table(synthetic_data)
    honest = _evaluate(tmp_path, synthetic_data, Bigram(table).eval(), None, None, "honest")
    peek = _evaluate(tmp_path, synthetic_data, PeeksAtTheNextRow(table).eval(), None, None, "peek")
    assert honest["evaluated_by"] == "graph"
    scored = peek.get("val_loss")
    assert peek["evaluated_by"] != "graph" or scored is None or scored >= honest["val_loss"] - 1e-6, (
        f"peeking at the next row scored {scored:.5f} against the honest {honest['val_loss']:.5f}")
    assert "statelessness probe failed" in json.dumps(peek.get("invalid")), peek  # caught, and by what


def test_a_graph_that_runs_past_its_snapshots_limit_starts_no_further_batch(bigram):
    """Work per batch is bounded before the first one runs; the snapshot's time limit is checked between
    batches, as a worker's would be."""
    import time

    from harness.eval.remote_model import InvalidSnapshot

    graph = load_graph(export(bigram)[0], dict(bigram.state_dict()), {})
    idx = torch.randint(0, 64, (4, 32))
    graph.deadline = time.monotonic() + 60
    assert graph(idx).shape == (4, 32, 64)
    graph.deadline = time.monotonic() - 1
    with pytest.raises(InvalidSnapshot, match="time limit"):
        graph(idx)


def test_a_graph_reads_no_randomness_through_attention_dropout(bigram):
    """`scaled_dot_product_attention(dropout_p=0.5)` would draw from the harness's random generator at
    every call: a seeded operator passes only where its arguments make it the identity."""

    class Noisy(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, idx):
            h = self.inner(idx)[:, None]
            return torch.nn.functional.scaled_dot_product_attention(h, h, h, dropout_p=0.5, is_causal=True)[:, 0]

    model = Noisy(bigram).eval()
    data, constants = export(model)
    try:
        graph = load_graph(data, dict(model.state_dict()), constants)
    except GraphRefused as exc:
        assert "draws random numbers (dropout_p=" in str(exc)
        return
    idx = torch.randint(0, 64, (4, 32))
    assert torch.equal(graph(idx), graph(idx)), "the graph's output is random"


# ---------------------------------------------------------------- guarantees that hold

def _program_with(bigram, change) -> bytes:
    program = json.loads(export(bigram)[0])
    change(program)
    return json.dumps(program).encode()


def _retarget(target: str):
    def change(program):
        program["graph_module"]["graph"]["nodes"][0]["target"] = target
    return change


@pytest.mark.parametrize("target", [
    "_operator.getitem", "builtins.eval", "torch.ops.prims.device_put.default", "torch.ops.aten.sym_size.int",
    "torch.ops.higher_order.cond", "torch.ops.slowrun.peek.default", "torch.ops.aten.embedding.default.x",
    "torch.ops.aten.embedding_.default", "torch.ops.aten.embedding.out", "torch.ops.aten.max.unary_out",
    "torch.ops.aten.embedding_dense_backward.default", "torch.ops.aten.from_file.default",
    "torch.ops.aten.bernoulli.p", "torch.ops.aten.normal.Tensor_float", "torch.ops.aten.copy_.default",
    "torch.ops.aten.set_.source_Tensor", "torch.ops.aten.resize_.default", "torch.ops.aten.index_put.default",
    "torch.ops.aten._local_scalar_dense.default", "torch.ops.aten.item.default",
])
def test_targets_off_the_list_are_refused(bigram, target):
    with pytest.raises(GraphRefused):
        check_program(parse_program(_program_with(bigram, _retarget(target))))


@pytest.mark.parametrize("arg", [
    {"as_graph": {"graph": {}, "signature": {}}}, {"as_sym_int": {"as_name": "s0"}}, {"as_custom_obj": {"name": "o"}},
    {"as_string": "os.system"}, {"as_strings": ["a"]}, {"as_sym_ints": []}, {"as_operator": "aten.add"},
    {"as_tensor": {"name": "x; import os"}}, {"as_sym_float": {"as_expr": {"expr_str": "1"}}},
    {"as_optional_tensors": [{"as_tensor": {"name": "__import__('os')"}}]},
])
def test_arguments_off_the_list_are_refused(bigram, arg):
    def change(program):
        program["graph_module"]["graph"]["nodes"][0]["inputs"].append({"name": "x", "arg": arg, "kind": 1})
    with pytest.raises(GraphRefused):
        check_program(parse_program(_program_with(bigram, change)))


def test_an_unknown_verifier_or_schema_type_is_refused_not_raised(bigram):
    model_weights = dict(bigram.state_dict())

    def bad_verifier(program):
        program["verifiers"] = ["__import__('os')"]
    with pytest.raises(GraphRefused):
        load_graph(_program_with(bigram, bad_verifier), model_weights, {})


def test_a_tensor_constant_in_the_signature_comes_from_safetensors_only(bigram):
    """A `tensor_constant` input is taken from the graph's constants file (safetensors); one missing there
    is refused, never read from anywhere else (no pickle)."""

    def as_constant(program):
        spec = program["graph_module"]["signature"]["input_specs"][0]
        program["graph_module"]["signature"]["input_specs"][0] = {
            "tensor_constant": {"arg": spec["parameter"]["arg"], "tensor_constant_name": "lifted"}}
    with pytest.raises(GraphRefused, match="not in the graph's constants"):
        load_graph(_program_with(bigram, as_constant), dict(bigram.state_dict()), {})


def test_a_dropout_in_training_mode_under_a_positional_name_is_refused(bigram):
    """The dropout check looks at the argument named `train`; the deserializer matches arguments by name,
    so a `train` passed under another name is not `train` (and a missing `train` cannot be built)."""

    def forge(program):
        nodes = program["graph_module"]["graph"]["nodes"]
        out = nodes[0]["outputs"][0]["as_tensor"]["name"]
        program["graph_module"]["graph"]["tensor_values"]["dropped"] = copy.deepcopy(
            program["graph_module"]["graph"]["tensor_values"][out])
        nodes.append(_node("torch.ops.aten.dropout.default", "dropped",
                           [_arg("input", as_tensor={"name": out}), _arg("p", as_float=0.5),
                            _arg("xtrain", as_bool=True)], [{"as_tensor": {"name": "dropped"}}]))
        program["graph_module"]["signature"]["output_specs"][0]["user_output"]["arg"]["as_tensor"]["name"] = "dropped"
        program["graph_module"]["graph"]["outputs"] = [{"as_tensor": {"name": "dropped"}}]
    with pytest.raises(GraphRefused):
        load_graph(_program_with(bigram, forge), dict(bigram.state_dict()), {})


def test_node_metadata_and_guards_are_not_run(bigram, tmp_path):
    """Stack traces, module paths and custom metadata are the method's text: dropped before building."""
    marker = tmp_path / "owned"

    def forge(program):
        for node in program["graph_module"]["graph"]["nodes"]:
            node["metadata"] = {"stack_trace": f"__import__('pathlib').Path('{marker}').touch()",
                                "nn_module_stack": f"L__self__,__import__('os').system('touch {marker}'),x",
                                "custom": json.dumps({"x": f"open('{marker}','w')"})}
    graph = load_graph(_program_with(bigram, forge), dict(bigram.state_dict()), {})
    graph(torch.randint(0, 64, (4, 32)))
    assert not marker.exists()


def test_elementwise_work_is_bounded_like_flops(bigram):
    """torch's FlopCounterMode counts matrix products only: a chain of 10,000 elementwise operators over
    the logits measured 0 FLOPs, though one forward is ~80 times the work the FLOP rule allows a dense
    forward of these weights (FLOP_FACTOR = 32). At MAX_NODES (200,000) a synthetic-track snapshot would
    take about an hour, in the harness's own process. Written elements are charged as work."""
    from harness.eval.graph_load import FLOP_FACTOR

    program = json.loads(export(bigram)[0])
    graph = program["graph_module"]["graph"]
    last = graph["nodes"][-1]["outputs"][0]["as_tensor"]["name"]
    like = graph["tensor_values"][last]
    chain = 10_000
    for i in range(chain):
        name = f"spin{i}"
        graph["tensor_values"][name] = copy.deepcopy(like)
        graph["nodes"].append(_node("torch.ops.aten.sin.default", name, [_arg("self", as_tensor={"name": last})],
                                    [{"as_tensor": {"name": name}}]))
        last = name
    program["graph_module"]["signature"]["output_specs"][0]["user_output"]["arg"] = {"as_tensor": {"name": last}}
    graph["outputs"] = [{"as_tensor": {"name": last}}]
    try:
        forward = load_graph(json.dumps(program).encode(), dict(bigram.state_dict()), {})
    except GraphRefused as exc:
        assert "elements" in str(exc) and "over 32 times a dense forward" in str(exc), exc
        return
    elements = 4 * 32 * 64
    dense = 2 * sum(p.numel() for p in bigram.parameters()) * 4 * 32
    pytest.fail(f"a forward of {chain * elements:,} elementwise operations ({chain * elements / dense:.0f} x a dense "
                f"forward; the FLOP rule allows {FLOP_FACTOR} x) measured {forward.bounds.flops} FLOPs and was accepted")
