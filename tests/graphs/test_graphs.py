"""Exported graphs: the harness runs them with the same numbers as the module's own forward, and refuses
every program that is not a pure, static, allow-listed function of weights and tokens."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from harness.eval.evaluation import open_eval_data

from harness.eval.graph_check import ALLOWED_OPS, GraphRefused, check_program, parse_program
from harness.eval.graph_load import load_graph
from tests.graphs.conftest import export, forged, program_of, small_gpts


@pytest.mark.parametrize("preset", sorted(small_gpts()))
def test_q0_gpts_export_and_match_their_eager_forward(preset):
    from q0_reference.model import GPT

    config = small_gpts()[preset]
    torch.manual_seed(1)
    model = GPT(config).eval()
    program, constants = export(model, 4, config.seq_len)
    graph = load_graph(program, dict(model.state_dict()), constants)
    idx = torch.randint(0, config.vocab_size, (6, config.seq_len))  # 6 rows: a full batch and a partial one
    with torch.no_grad():
        expected = model(idx)
    got = graph(idx)
    assert got.shape == expected.shape
    assert torch.equal(got, expected)  # the same operators on the same floats
    assert set(name.split(".")[0] for name in graph.summary.ops) <= ALLOWED_OPS


@pytest.mark.parametrize("preset", sorted(small_gpts()))
def test_the_program_is_read_into_the_same_schema_objects_as_torch_reads_it(preset):
    """The harness's own reader of the program (field types resolved once per class) against torch's."""
    from torch._export.serde import schema
    from torch._export.serde.serialize import _dict_to_dataclass

    from harness.eval.graph_load import _schema_value
    from q0_reference.model import GPT

    config = small_gpts()[preset]
    program, _ = export(GPT(config).eval(), 4, config.seq_len)
    ours = _schema_value(schema.ExportedProgram, program_of(program))
    assert ours == _dict_to_dataclass(schema.ExportedProgram, program_of(program))
    assert len(ours.graph_module.graph.nodes) > 20


def test_a_malformed_union_is_refused_by_the_check_and_by_the_reader(bigram):
    from torch._export.serde import schema

    from harness.eval.graph_load import _schema_value

    program = program_of(export(bigram)[0])
    node = program["graph_module"]["graph"]["nodes"][0]
    node["inputs"][0]["arg"] = {"as_tensor": {"name": "x"}, "as_int": 1}  # a union must hold one field
    with pytest.raises(GraphRefused, match="malformed argument"):
        load_graph(forged(program), dict(bigram.state_dict()), {})
    with pytest.raises(GraphRefused, match="one field"):  # (the reader does not count on the check)
        _schema_value(schema.Argument, node["inputs"][0]["arg"])
    with pytest.raises(GraphRefused, match="no field"):
        _schema_value(schema.Argument, {"as_pickle": "x"})


def test_bf16_weights_run_as_the_graph_declares(bigram):
    program, constants = export(bigram)
    weights = {k: v.to(torch.bfloat16) for k, v in bigram.state_dict().items()}
    graph = load_graph(program, weights, constants)
    idx = torch.randint(0, 64, (4, 32))
    expected = torch.nn.functional.embedding(idx, weights["table.weight"].float())
    assert torch.equal(graph(idx), expected)


def test_a_buffer_update_is_refused():
    class Remembers(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.table = torch.nn.Embedding(64, 64)
            self.register_buffer("seen", torch.zeros(64))

        def forward(self, idx):
            logits = self.table(idx)
            self.seen.add_(logits.mean(dim=(0, 1)))  # a memory of what it was shown, kept across calls
            return logits + self.seen

    program, _ = export(Remembers().eval())
    with pytest.raises(GraphRefused, match="return one tensor and mutate nothing"):
        check_program(parse_program(program))


def test_a_custom_operator_is_refused(bigram):
    lib = torch.library.Library("slowrun_test_peek", "FRAGMENT")
    lib.define("peek(Tensor x) -> Tensor")
    lib.impl("peek", lambda x: x.clone(), "CompositeExplicitAutograd")
    lib.impl("peek", lambda x: torch.empty_like(x), "Meta")

    class Peeks(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, idx):
            return torch.ops.slowrun_test_peek.peek(self.inner(idx))

    program, _ = export(Peeks(bigram).eval())
    with pytest.raises(GraphRefused, match="only ATen operators are evaluated"):
        check_program(parse_program(program))


def _with_node(program: dict, target: str, inputs: list) -> dict:
    nodes = program["graph_module"]["graph"]["nodes"]
    nodes.insert(0, {"target": target, "inputs": inputs, "outputs": [{"as_tensor": {"name": "forged"}}],
                     "metadata": {}, "name": "forged", "is_hop_single_tensor_return": None})
    return program


@pytest.mark.parametrize("case", ["from_file", "in_place", "out_overload", "rand", "dropout_train", "guards",
                                  "symbolic", "range", "code_name", "string", "nan"])
def test_forged_programs_are_refused(bigram, case):
    program = program_of(export(bigram)[0])
    tensor = {"name": "self", "arg": {"as_tensor": {"name": "idx"}}, "kind": 1}
    match = {
        "from_file": lambda p: _with_node(p, "torch.ops.aten.from_file.default",
                                          [{"name": "filename", "arg": {"as_string": "/etc/shadow"}, "kind": 1}]),
        "in_place": lambda p: _with_node(p, "torch.ops.aten.add_.Tensor", [tensor]),
        "out_overload": lambda p: _with_node(p, "torch.ops.aten.add.out", [tensor]),
        "rand": lambda p: _with_node(p, "torch.ops.aten.rand_like.default", [tensor]),
        "dropout_train": lambda p: _with_node(p, "torch.ops.aten.dropout.default",
                                              [tensor, {"name": "train", "arg": {"as_bool": True}, "kind": 1}]),
        "guards": lambda p: {**p, "guards_code": ["__import__('os').system('echo owned')"]},
        "symbolic": lambda p: _symbolic(p),
        "range": lambda p: {**p, "range_constraints": {"s0": {"min_val": 1, "max_val": 8}}},
        "code_name": lambda p: _renamed(p),
        "string": lambda p: _with_node(p, "torch.ops.aten.div.Tensor_mode",
                                       [tensor, {"name": "rounding_mode", "arg": {"as_string": "__import__"}, "kind": 1}]),
        "nan": None,
    }[case]
    data = forged(match(program)) if match else export(bigram)[0].replace(b'"as_int": 32', b'"as_float": NaN', 1)
    with pytest.raises(GraphRefused):
        check_program(parse_program(data))


def _symbolic(program: dict) -> dict:
    name, meta = next(iter(program["graph_module"]["graph"]["tensor_values"].items()))
    meta["sizes"][0] = {"as_expr": {"expr_str": "__import__('os').getpid()", "hint": None}}
    return program


def _renamed(program: dict) -> dict:
    program["graph_module"]["graph"]["nodes"][0]["name"] = "x = __import__('os'); y"
    return program


def test_a_graph_that_would_fill_the_memory_is_refused_before_it_runs(bigram):
    class Huge(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, idx):
            big = torch.ones(200_000, 100_000, device=idx.device)  # 20 billion elements, only ever fake here
            return self.inner(idx) + big.sum()

    model = Huge(bigram).eval()
    program, constants = export(model)
    with pytest.raises(GraphRefused, match="intermediate of the graph holds 20,000,000,000 elements"):
        load_graph(program, dict(model.state_dict()), constants)


def test_a_graph_that_would_hold_the_clock_is_refused_before_it_runs():
    class Spins(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.table = torch.nn.Embedding(64, 64)
            self.mix = torch.nn.Linear(64, 64, bias=False)

        def forward(self, idx):
            x = self.table(idx)
            for _ in range(200):  # 200 matmuls where a model of these weights does one
                x = self.mix(x)
            return x

    model = Spins().eval()
    program, constants = export(model)
    with pytest.raises(GraphRefused, match="FLOPs and writes .* elements .*, over 32 times a dense forward"):
        load_graph(program, dict(model.state_dict()), constants)


def test_weights_must_have_the_shapes_the_graph_declares(bigram):
    program, constants = export(bigram)
    with pytest.raises(GraphRefused, match="has shape"):
        load_graph(program, {"table.weight": torch.zeros(64, 32)}, constants)
    with pytest.raises(GraphRefused, match="not in the snapshot's weights"):
        load_graph(program, {}, constants)


@pytest.mark.parametrize("damage", ["none", "missing", "changed"])
def test_a_graph_that_cannot_be_used_at_evaluation_falls_back_to_the_method_code(damage, tmp_path, synthetic_data):
    """A snapshot whose graph files are gone (a bundle packed without them) or changed after intake is
    run by its own code in the worker instead, with the same numbers; an intact one from its graph."""
    from q0_reference.model import GPT

    from harness.eval.evaluation import EvaluationOptions, evaluate_run
    from harness.confined.graph_export import GraphExporter
    from harness.eval.probes import ProbeSettings
    from harness.formats.snapshots import GRAPH
    from tests.graphs.conftest import with_graph

    config = dataclasses.replace(small_gpts()["cpu_small"], vocab_size=512, seq_len=128)
    torch.manual_seed(0)
    model = GPT(config).eval()
    run = tmp_path / "run"
    with_graph(run, "s", model, config.to_dict(), 1.0, GraphExporter())
    graph_file = run / "snapshots" / "s" / GRAPH
    if damage == "missing":
        graph_file.unlink()
    elif damage == "changed":
        graph_file.write_bytes(graph_file.read_bytes() + b" ")
    result = evaluate_run(run, synthetic_data, 128, None, None, EvaluationOptions(
        batch_size=16, progress=False, builder_roots=(), probes=ProbeSettings(seed=0), fork_server=False))
    row = result["snapshots"][0]
    assert row["evaluated_by"] == ("graph" if damage == "none" else "method code")
    windows = torch.from_numpy(np.asarray(open_eval_data(synthetic_data, 128).val_windows, dtype=np.int64))
    with torch.no_grad():
        logp = torch.log_softmax(model(windows[:, :-1]).double(), -1).gather(-1, windows[:, 1:, None])
    assert abs(row["val_loss"] + float(logp.mean())) < 1e-5


def test_one_architecture_is_built_once_per_evaluation(tmp_path, synthetic_data, monkeypatch):
    """Snapshots that share a program (one architecture) share its build: it is checked, built and bounded
    once, and each snapshot's weights are bound to it."""
    import harness.eval.graph_load as load
    from harness.eval.evaluation import EvaluationOptions, evaluate_run
    from harness.confined.graph_export import GraphExporter
    from harness.eval.probes import ProbeSettings
    from tests.graphs.conftest import with_graph
    from q0_reference.model import GPT

    config = dataclasses.replace(small_gpts()["cpu_small"], vocab_size=512, seq_len=128)
    run, exporter = tmp_path / "run", GraphExporter()
    for i in range(3):
        torch.manual_seed(i)
        with_graph(run, f"s{i}", GPT(config).eval(), config.to_dict(), float(i + 1), exporter)
    builds, build = [], load.build_graph
    monkeypatch.setattr(load, "build_graph", lambda *a, **k: builds.append(1) or build(*a, **k))
    result = evaluate_run(run, synthetic_data, 128, None, None, EvaluationOptions(
        batch_size=16, progress=False, builder_roots=(), probes=ProbeSettings(seed=0), fork_server=False))
    assert [row["evaluated_by"] for row in result["snapshots"]] == ["graph"] * 3
    assert len(builds) == 1
    assert len({row["val_loss"] for row in result["snapshots"]}) == 3  # each scored with its own weights


def test_copies_nobody_can_observe_are_dropped_and_the_others_kept():
    """A same-layout copy inside a graph that cannot write is dropped; a copy into another layout, and a
    copy the graph returns, are kept (the results are compared with the eager forward, bit for bit)."""

    class Copies(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.table = torch.nn.Embedding(64, 8)
            self.drop = torch.nn.Dropout(0.1)  # eval mode: exported as a copy

        def forward(self, idx):
            h = self.drop(self.table(idx)).transpose(1, 2).contiguous()  # a copy into another layout
            logits = torch.nn.functional.linear(h.transpose(1, 2), self.table.weight)
            return logits.clone()  # a copy that is the output

    torch.manual_seed(0)
    module = Copies().eval()
    program, constants = export(module, 4, 16)
    exported_clones = [n for n in program_of(program)["graph_module"]["graph"]["nodes"]
                       if n["target"] == "torch.ops.aten.clone.default"]
    graph = load_graph(program, dict(module.state_dict()), constants)
    kept = [n for n in graph._module.graph.nodes if n.target is torch.ops.aten.clone.default]
    assert len(exported_clones) == 3 and len(kept) == 2
    assert {n.kwargs.get("memory_format") for n in kept} == {torch.contiguous_format, None}
    assert not [n for n in graph._module.graph.nodes if n.target is torch.ops.aten._assert_tensor_metadata.default]
    idx = torch.randint(0, 64, (4, 16))
    with torch.no_grad():
        assert torch.equal(graph(idx), module(idx))
