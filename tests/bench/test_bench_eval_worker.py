"""Evaluation through the sandboxed worker, probes included, against the old in-process evaluation.

Model: the q0 reference GPT in the `cpu_small` shape (d=128, 4 layers, 4 heads, relu2) sized to the
synthetic track (vocabulary 512, windows of 129); weights are random, which changes no cost. Data: the
synthetic track's validation split (256 windows) and fitness windows (32), batch 16.

- Baseline (what evaluation did before the worker): `load_snapshot_model` in this process, then
  `token_logprobs` over the validation and the fitness windows.
- Worker: `snapshot_logprobs` with an empty cache: start the worker (sandbox, torch import), send the
  weights, score both splits through it with the causality probe's batches slipped in, run the
  statelessness probe, write the caches and their sidecar. Each case is measured twice in the same run:
  "fresh" (every worker a fresh process, as before the fork server) and "forked" (workers forked from
  the evaluation's zygote, `harness.eval.fork_server`).

1. One snapshot, cold: the worker's start (a fresh Python importing torch, ~1.5 s here; forked: the
   zygote's start, then one fork) is paid in full.
2. One snapshot with its worker started ahead (`start_worker`, as the runner does while the method
   trains; forked: it starts the zygote, and the worker is forked at load): what is left is the
   probes, the transfer of the logits and the cache's sidecar.
3. Per snapshot in a run of K snapshots with prefetch: `evaluate_run` (which starts the next snapshot's
   worker, and sends it its weights, while the current one is scored) against K baselines: cold (the
   zygote started by evaluate_run), with the zygote started ahead (`start_worker` a few seconds before,
   as the runner does while the method trains: what a run pays), and without prefetch.

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
from harness.eval.evaluation import EvaluationOptions, WorkerOptions, evaluate_run, open_eval_data, snapshot_logprobs, start_worker
from harness.eval.logprobs import token_logprobs
from harness.eval.probes import ProbeSettings
from harness.formats.snapshots import list_snapshots, load_snapshot_model, write_snapshot
from harness.rules.tracks import get_track
from q0_reference.model import BUILDER, build_gpt
from q0_reference.presets import get_preset
from tests.bench.timing import best_interleaved as interleaved, report

ROUNDS = 3
K = 4
BATCH = 16
TARGET = 1.2


def synthetic_run(root, snapshots: int):
    """The synthetic track prepared under ``root`` and a run of ``snapshots`` random q0 reference GPTs in
    the cpu_small shape, stamped 1, 2, ... epochs: (run folder, data folder, its evaluation data)."""
    data = root / "synthetic"
    track = get_track("synthetic")
    prepare_track(track, data, progress=False)
    config = get_preset("cpu_small").model_config(vocab_size=512, seq_len=track.seq_len).to_dict()
    run = root / "run"
    for i in range(snapshots):
        torch.manual_seed(i)
        write_snapshot(run / "snapshots", f"s{i:02d}", build_gpt(config), {"builder": BUILDER, "config": config},
                       float(i + 1), 100 * (i + 1), {})
    return run, data, open_eval_data(data, track.seq_len)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    run, data_dir, data = synthetic_run(tmp_path_factory.mktemp("eval_worker_bench"), K)
    return run, data_dir, data, list_snapshots(run / "snapshots")


def in_process(snapshot, data) -> tuple[np.ndarray, np.ndarray]:
    model = load_snapshot_model(snapshot)
    return token_logprobs(model, data.fit_windows, BATCH), token_logprobs(model, data.val_windows, BATCH)


def through_worker(snapshot, data, cache, worker=None, forked: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One snapshot through a worker; ``forked``: cold, through a fork server started for it."""
    shutil.rmtree(cache, ignore_errors=True)
    options = WorkerOptions(builder_roots=(), probes=ProbeSettings(seed=0), fork_server=forked)
    server = options.new_fork_server() if forked and worker is None else None
    try:
        worker = worker or (options.remote(snapshot, "cpu", data.vocab_size, server) if server else None)
        return snapshot_logprobs(snapshot, data, cache, BATCH, "cpu", options=options, worker=worker)
    finally:
        if server is not None:
            server.close()


def test_one_snapshot_cold_through_the_worker(benchmark, setup):
    run, _, data, snapshots = setup
    snap = snapshots[0]
    fit, val = through_worker(snap, data, run / "eval-one")  # the same numbers as in-process
    ref_fit, ref_val = in_process(snap, data)
    np.testing.assert_allclose(val, ref_val.reshape(-1), atol=1e-5)
    np.testing.assert_allclose(fit, ref_fit.reshape(-1), atol=1e-5)
    forked_fit, forked_val = through_worker(snap, data, run / "eval-one", forked=True)
    assert np.array_equal(forked_val, val) and np.array_equal(forked_fit, fit)  # bit for bit
    base, fresh, forked = interleaved(lambda: in_process(snap, data), lambda: through_worker(snap, data, run / "eval-one"),
                                      lambda: through_worker(snap, data, run / "eval-one", forked=True))
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    print(f"\nin-process {base:.2f} s, through a fresh worker {fresh:.2f} s, through a cold fork server {forked:.2f} s "
          f"(one snapshot, {len(data.val_windows)} validation + {len(data.fit_windows)} fitness windows)")
    report(benchmark, "one snapshot through a fresh worker / in-process", fresh / base, TARGET)
    report(benchmark, "one snapshot through a cold fork server / in-process", forked / base, TARGET)


def test_one_snapshot_with_its_worker_started_ahead(benchmark, setup):
    run, _, data, snapshots = setup
    snap = snapshots[0]
    best = [float("inf")] * 3
    for _ in range(ROUNDS):
        start = time.perf_counter()
        in_process(snap, data)
        best[0] = min(best[0], time.perf_counter() - start)
        for i, forked in ((1, False), (2, True)):
            ahead = start_worker("cpu", builder_roots=(), fork_server=forked)
            time.sleep(4.0)  # the worker (or zygote) imports torch meanwhile, as while the method trains
            start = time.perf_counter()
            try:
                through_worker(snap, data, run / "eval-ahead", worker=ahead)
            finally:
                ahead.close()  # with the fork server it owns
            best[i] = min(best[i], time.perf_counter() - start)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    print(f"\nin-process {best[0]:.2f} s, through a fresh worker started ahead {best[1]:.2f} s, forked from a "
          f"zygote started ahead {best[2]:.2f} s")
    report(benchmark, "one snapshot through a fresh worker started ahead / in-process", best[1] / best[0], TARGET)
    report(benchmark, "one snapshot forked from a zygote started ahead / in-process", best[2] / best[0], TARGET)


def test_per_snapshot_cost_in_a_run_with_prefetch(benchmark, setup):
    run, data_dir, data, snapshots = setup

    def baseline():
        for snap in snapshots:
            in_process(snap, data)

    def evaluation(forked: bool, prefetch: bool = True, first_worker=None):
        shutil.rmtree(run / "eval", ignore_errors=True)
        result = evaluate_run(run, data_dir, 128, None, None, EvaluationOptions(
            batch_size=BATCH, progress=False, builder_roots=(), probes=ProbeSettings(seed=0), prefetch=prefetch,
            fork_server=forked), first_worker=first_worker)
        assert not result["invalid_snapshots"]

    def started_ahead() -> float:
        ahead = start_worker("cpu", builder_roots=(), fork_server=True)
        time.sleep(4.0)  # the zygote imports torch meanwhile, as while the method trains
        start = time.perf_counter()
        evaluation(True, first_worker=ahead)
        return time.perf_counter() - start

    base, fresh, forked = interleaved(baseline, lambda: evaluation(False), lambda: evaluation(True))
    ahead = min(started_ahead() for _ in range(ROUNDS))
    sequential, forked_sequential = interleaved(lambda: evaluation(False, False), lambda: evaluation(True, False),
                                                rounds=2)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    print(f"\n{K} snapshots: in-process {base:.2f} s; evaluate_run with prefetch: fresh workers {fresh:.2f} s, "
          f"forked {forked:.2f} s, forked from a zygote started ahead {ahead:.2f} s; without prefetch: fresh "
          f"{sequential:.2f} s, forked {forked_sequential:.2f} s")
    report(benchmark, f"evaluate_run of {K} snapshots (prefetch, fresh workers) / in-process", fresh / base, TARGET)
    report(benchmark, f"evaluate_run of {K} snapshots (prefetch, forked workers) / in-process", forked / base, TARGET)
    report(benchmark, f"evaluate_run of {K} snapshots (prefetch, zygote started ahead as in a run) / in-process",
           ahead / base, TARGET)
    report(benchmark, "prefetch speed-up (fresh workers)", sequential / fresh)
    report(benchmark, "prefetch speed-up (forked workers)", forked_sequential / forked)
