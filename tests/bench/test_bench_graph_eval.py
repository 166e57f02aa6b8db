"""Evaluation from exported graphs, against the forward floor, in one run on this machine.

Model: the q0 reference GPT in the `cpu_small` shape (d=128, 4 layers), weights random (no cost changes).
All sides run torch on one thread (as the test suite does), timed interleaved, best of ROUNDS.

1. One snapshot at GPT-2's vocabulary (50,257), 155 windows of 129, batch 16:
   - floor: the model's own forward in this process and `token_logprobs` (normalised here);
   - graph forward: the same windows through the snapshot's exported graph, built by the harness
     (`token_logprobs` over `GraphForward`): the forward path itself, target <= 1.05x;
   - graph evaluation: `snapshot_logprobs` with an empty cache: build, bound, bind, the probes' two extra
     batches (causality's and statelessness's: 2/10 of this small set, 2/300 of fineweb's), the cache;
   - worker: the same snapshot by its own code in the sandboxed worker (`graphs=False`; on a CPU each
     batch in a fresh fork, single-threaded), beside them.
2. Sixteen snapshots of the synthetic track (vocabulary 512; 254 validation and 32 fitness windows):
   `evaluate_run` with the prior and the curve, from graphs, against its forward floor: the forwards an
   evaluation cannot do without, sixteen in-process `token_logprobs` over both splits plus the probes'
   two batches per snapshot (both probes run on every snapshot, graph or not: a pure forward can still
   read the other rows of its batch; 2 batches in 20 here, 2 in 307 on fineweb); target <= 1.1x. The ratio to the scoring forwards alone is reported beside it.
   Building the program, once per evaluation, is about 1%; the graph's own forward is at the eager
   model's (`load._without_copies` drops the copies eval-mode dropout exports).

Run: pytest tests/bench/test_bench_graph_eval.py -m bench -s
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from harness.data.prepare import prepare_track
from harness.eval.evaluation import EvalData, EvaluationOptions, WorkerOptions, evaluate_run, open_eval_data, snapshot_logprobs
from harness.confined.graph_export import GraphExporter
from harness.eval.graph_load import load_graph
from harness.eval.logprobs import token_logprobs
from harness.eval.probes import ProbeSettings
from harness.formats.snapshots import GRAPH, GRAPH_CONSTANTS, list_snapshots
from harness.rules.tracks import get_track
from q0_reference.model import build_gpt
from q0_reference.presets import get_preset
from tests.bench.timing import best_interleaved as best, report
from tests.graphs.conftest import with_graph

ROUNDS = 3
BATCH = 16


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_one_snapshot_at_gpt2_vocabulary(benchmark, tmp_path):
    config = get_preset("cpu_small").model_config(vocab_size=50_257, seq_len=128).to_dict()
    torch.manual_seed(0)
    model = build_gpt(config).eval()
    run = tmp_path / "run"
    with_graph(run, "gpt2", model, config, 1.0, GraphExporter())
    snap = list_snapshots(run / "snapshots")[0]
    windows = np.random.default_rng(0).integers(0, 50_257, size=(155, 129)).astype(np.int64)
    data = EvalData(windows, np.empty((0, 129), np.int64), None, 50_257)
    graph = load_graph((snap.folder / GRAPH).read_bytes(), dict(model.state_dict()),
                       load_file(str(snap.folder / GRAPH_CONSTANTS)))
    np.testing.assert_array_equal(token_logprobs(graph, windows, BATCH), token_logprobs(model, windows, BATCH))
    probes = ProbeSettings(seed=0)

    def evaluation(graphs: bool):
        def run_once():
            shutil.rmtree(run / "eval", ignore_errors=True)
            options = WorkerOptions(builder_roots=(), probes=probes, graphs=graphs, fork_server=False)
            snapshot_logprobs(snap, data, run / "eval", BATCH, "cpu", options=options)
        return run_once

    def rounds():
        return best(lambda: token_logprobs(model, windows, BATCH), lambda: token_logprobs(graph, windows, BATCH),
                    evaluation(True), evaluation(False))

    floor, forward, whole, worker = benchmark.pedantic(rounds, rounds=1, iterations=1)
    print(f"\nfloor {floor:.2f} s, graph forward {forward:.2f} s, graph evaluation {whole:.2f} s, "
          f"worker {worker:.2f} s")
    report(benchmark, "graph_forward_ratio", forward / floor, target=1.05)
    report(benchmark, "graph_evaluation_ratio", whole / floor)
    report(benchmark, "worker_ratio", worker / floor)


def test_sixteen_snapshots_with_prior_and_curve(benchmark, tmp_path):
    data_dir = tmp_path / "synthetic"
    track = get_track("synthetic")
    prepare_track(track, data_dir, progress=False)
    config = get_preset("cpu_small").model_config(vocab_size=512, seq_len=track.seq_len).to_dict()
    run, exporter, models = tmp_path / "run", GraphExporter(), []
    for i in range(16):
        torch.manual_seed(i)
        models.append(build_gpt(config).eval())
        with_graph(run, f"s{i:02d}", models[-1], config, float(i + 1), exporter)
    data = open_eval_data(data_dir, track.seq_len)

    probe_batch = torch.from_numpy(data.val_windows[:BATCH, :-1].astype(np.int64))

    def floor():
        for model in models:
            token_logprobs(model, data.val_windows, BATCH)
            token_logprobs(model, data.fit_windows, BATCH)

    def probe_forwards():
        for model in models:  # the probes' two batches per snapshot, normalised as their rows are
            with torch.inference_mode():
                for _ in range(2):
                    torch.log_softmax(model(probe_batch).float(), dim=-1)

    def evaluation():
        shutil.rmtree(run / "eval", ignore_errors=True)
        result = evaluate_run(run, data_dir, track.seq_len, "prior", None, EvaluationOptions(
            batch_size=BATCH, progress=False, builder_roots=(), probes=ProbeSettings(seed=0), fork_server=False))
        assert {row["evaluated_by"] for row in result["snapshots"]} == {"graph"} and len(result["curve"]) > 0

    low, probe, whole = benchmark.pedantic(lambda: best(floor, probe_forwards, evaluation), rounds=1, iterations=1)
    low_probed = low + probe
    print(f"\nscoring forwards {low:.2f} s, with the probe's batches {low_probed:.2f} s, evaluate_run from graphs "
          f"{whole:.2f} s (16 snapshots, prior and curve)")
    report(benchmark, "run_evaluation_ratio_to_scoring", whole / low)
    report(benchmark, "run_evaluation_ratio", whole / low_probed, target=1.1)
