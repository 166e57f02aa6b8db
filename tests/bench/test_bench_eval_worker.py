"""Evaluation through the sandboxed worker, probes included, against the old in-process evaluation.

Model: the q0 reference GPT in the `cpu_small` shape (d=128, 4 layers, 4 heads, relu2) sized to the
synthetic track (vocabulary 512, windows of 129); weights are random, which changes no cost. Data: the
synthetic track's validation split (256 windows) and fitness windows (32), batch 16.

- Baseline (what evaluation did before the worker): `load_snapshot_model` in this process, then
  `token_logprobs` over the validation and the fitness windows.
- Worker: `snapshot_logprobs` with an empty cache: spawn the worker under the supervisor (sandbox,
  torch import), send the weights, score both splits through it with the causality probe's batches
  slipped in, run the statelessness probe, write the caches and their sidecar.

1. One snapshot, cold: the worker's start (a fresh Python importing torch, ~1.5 s here) is paid in full.
2. One snapshot with its worker started ahead (`start_worker`, as the runner can do while the method
   trains): what is left is the probes, the transfer of the logits and the cache's sidecar.
3. Per snapshot in a run of K snapshots with prefetch: `evaluate_run` (which starts the next snapshot's
   worker while the current one is scored) against K baselines, and the same without prefetch.

Both sides run torch on one thread (SLOWRUN_NUM_THREADS=1, as the test suite sets it), timed interleaved,
best of ROUNDS. The target is <= 1.2x; see the report printed by each test.

Run: pytest tests/bench/test_bench_eval_worker.py -m bench -s
"""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
import torch

from harness.data.prepare import prepare_track
from harness.evaluation import WorkerOptions, evaluate_run, open_eval_data, snapshot_logprobs, start_worker
from harness.logprobs import token_logprobs
from harness.probes import ProbeSettings
from harness.snapshots import list_snapshots, load_snapshot_model, write_snapshot
from harness.tracks import get_track
from q0_reference.model import BUILDER, build_gpt
from q0_reference.presets import get_preset
from tests.bench.timing import report

ROUNDS = 3
K = 4
BATCH = 16
TARGET = 1.2


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_worker_bench")
    data = root / "synthetic"
    track = get_track("synthetic")
    prepare_track(track, data, progress=False)
    config = get_preset("cpu_small").model_config(vocab_size=512, seq_len=track.seq_len).to_dict()
    run = root / "run"
    for i in range(K):
        torch.manual_seed(i)
        write_snapshot(run / "snapshots", f"s{i}", build_gpt(config), {"builder": BUILDER, "config": config},
                       float(i + 1), 100 * (i + 1), {})
    return run, data, open_eval_data(data, track.seq_len), list_snapshots(run / "snapshots")


def in_process(snapshot, data) -> tuple[np.ndarray, np.ndarray]:
    model = load_snapshot_model(snapshot)
    return token_logprobs(model, data.fit_windows, BATCH), token_logprobs(model, data.val_windows, BATCH)


def through_worker(snapshot, data, cache, worker=None) -> tuple[np.ndarray, np.ndarray]:
    shutil.rmtree(cache, ignore_errors=True)
    options = WorkerOptions(builder_roots=(), probes=ProbeSettings(seed=0))
    return snapshot_logprobs(snapshot, data, cache, BATCH, "cpu", options=options, worker=worker)


def interleaved(first, second, rounds: int = ROUNDS) -> tuple[float, float]:
    best = [float("inf"), float("inf")]
    for _ in range(rounds):
        for i, fn in enumerate((first, second)):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best[0], best[1]


def test_one_snapshot_cold_through_the_worker(benchmark, setup):
    run, _, data, snapshots = setup
    snap = snapshots[0]
    fit, val = through_worker(snap, data, run / "eval-one")  # the same numbers as in-process
    ref_fit, ref_val = in_process(snap, data)
    np.testing.assert_allclose(val, ref_val.reshape(-1), atol=1e-5)
    np.testing.assert_allclose(fit, ref_fit.reshape(-1), atol=1e-5)
    base, worker = interleaved(lambda: in_process(snap, data), lambda: through_worker(snap, data, run / "eval-one"))
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    print(f"\nin-process {base:.2f} s, through the worker {worker:.2f} s (one snapshot, {len(data.val_windows)} "
          f"validation + {len(data.fit_windows)} fitness windows)")
    report(benchmark, "one snapshot through the worker / in-process", worker / base, TARGET)


def test_one_snapshot_with_its_worker_started_ahead(benchmark, setup):
    run, _, data, snapshots = setup
    snap = snapshots[0]
    best = [float("inf"), float("inf")]
    for _ in range(ROUNDS):
        ahead = start_worker("cpu", builder_roots=())
        time.sleep(4.0)  # the worker imports torch meanwhile, as it would while the method trains
        start = time.perf_counter()
        in_process(snap, data)
        best[0] = min(best[0], time.perf_counter() - start)
        start = time.perf_counter()
        through_worker(snap, data, run / "eval-ahead", worker=ahead)
        best[1] = min(best[1], time.perf_counter() - start)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    print(f"\nin-process {best[0]:.2f} s, through a worker started ahead {best[1]:.2f} s")
    report(benchmark, "one snapshot through a worker started ahead / in-process", best[1] / best[0], TARGET)


def test_per_snapshot_cost_in_a_run_with_prefetch(benchmark, setup):
    run, data_dir, data, snapshots = setup

    def baseline():
        for snap in snapshots:
            in_process(snap, data)

    def evaluation():
        shutil.rmtree(run / "eval", ignore_errors=True)
        result = evaluate_run(run, data_dir, 128, None, None, batch_size=BATCH, progress=False, builder_roots=(),
                              probes=ProbeSettings(seed=0), prefetch=True)
        assert not result["invalid_snapshots"]

    def evaluation_without_prefetch():
        shutil.rmtree(run / "eval", ignore_errors=True)
        evaluate_run(run, data_dir, 128, None, None, batch_size=BATCH, progress=False, builder_roots=(),
                     probes=ProbeSettings(seed=0), prefetch=False)

    base, worker = interleaved(baseline, evaluation)
    _, sequential = interleaved(lambda: None, evaluation_without_prefetch, rounds=2)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    print(f"\n{K} snapshots: in-process {base:.2f} s, evaluate_run with prefetch {worker:.2f} s, "
          f"without {sequential:.2f} s")
    report(benchmark, f"evaluate_run of {K} snapshots (prefetch) / in-process", worker / base, TARGET)
    report(benchmark, "prefetch speed-up", sequential / worker)
