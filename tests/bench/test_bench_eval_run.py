"""Evaluating a whole small-track run against the floor of one forward pass of every snapshot.

Run: 16 snapshots of the q0 reference GPT in the `cpu_small` preset's shape (d=128, 4 layers) sized to the
synthetic track (vocabulary 512, windows of 129); random weights, which change no cost. Data: the
synthetic track's validation split (256 windows) and its fitness windows (32), batch 16.

- Floor: in this process, for every snapshot `load_snapshot_model` and `token_logprobs` over the
  validation and the fitness windows: the least any evaluation of these snapshots must do.
- Evaluation: `evaluate_run` with an empty cache, ensemble "prior" (so the prior is fitted on the
  fitness windows, and the K sweep and the loss curve are computed), prefetch on: the probes, the
  caches, everything of the record. Measured three ways in the same run: "fresh" (every snapshot's
  worker a fresh process, as before the fork server), "forked" (workers forked from one zygote that
  evaluate_run starts, so its torch import is paid) and "started ahead" (the zygote started by
  `start_worker` a few seconds before, as the runner does while the method trains: what a run pays).

Both sides run torch on one thread (SLOWRUN_NUM_THREADS=1, as the test suite sets it), timed interleaved,
best of ROUNDS. The target is <= 1.3x the floor.

Run: pytest tests/bench/test_bench_eval_run.py -m bench -s
"""

from __future__ import annotations

import shutil
import time

from harness.eval.evaluation import EvaluationOptions, evaluate_run, start_worker
from harness.eval.logprobs import token_logprobs
from harness.eval.probes import ProbeSettings
from harness.formats.snapshots import list_snapshots, load_snapshot_model
from harness.rules.tracks import get_track
from tests.bench.test_bench_eval_worker import interleaved, synthetic_run
from tests.bench.timing import report

SNAPSHOTS = 16
BATCH = 16
ROUNDS = 2
TARGET = 1.3


def test_evaluating_a_16_snapshot_run_against_the_forward_floor(benchmark, tmp_path):
    run, data_dir, data = synthetic_run(tmp_path, SNAPSHOTS)
    track = get_track("synthetic")
    snapshots = list_snapshots(run / "snapshots")
    assert len(data.fit_windows) > 0

    def floor():
        for snap in snapshots:
            model = load_snapshot_model(snap)
            token_logprobs(model, data.val_windows, BATCH)
            token_logprobs(model, data.fit_windows, BATCH)

    results = {}

    def evaluation(forked: bool, key=None, first_worker=None):
        shutil.rmtree(run / "eval", ignore_errors=True)
        key = forked if key is None else key
        results[key] = evaluate_run(run, data_dir, track.seq_len, "prior", None, EvaluationOptions(
            batch_size=BATCH, progress=False, builder_roots=(), probes=ProbeSettings(seed=0), fork_server=forked),
            first_worker=first_worker)
        assert not results[key]["invalid_snapshots"] and results[key]["prior"] is not None

    def started_ahead() -> float:
        ahead = start_worker("cpu", builder_roots=(), fork_server=True)
        time.sleep(4.0)  # the zygote imports torch meanwhile, as while the method trains
        start = time.perf_counter()
        evaluation(True, "ahead", ahead)
        return time.perf_counter() - start

    base, fresh, forked = interleaved(floor, lambda: evaluation(False), lambda: evaluation(True), rounds=ROUNDS)
    ahead = min(started_ahead() for _ in range(ROUNDS))
    assert results[True]["result"] == results[False]["result"] == results["ahead"]["result"]  # bit for bit
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    print(f"\n{SNAPSHOTS} snapshots, {len(data.val_windows)} validation + {len(data.fit_windows)} fitness windows: "
          f"floor {base:.2f} s, evaluate_run with fresh workers {fresh:.2f} s, with forked workers {forked:.2f} s, "
          f"forked from a zygote started ahead {ahead:.2f} s")
    report(benchmark, f"evaluate_run of {SNAPSHOTS} snapshots, prior and curve (fresh workers) / floor", fresh / base,
           TARGET)
    report(benchmark, f"evaluate_run of {SNAPSHOTS} snapshots, prior and curve (forked workers) / floor", forked / base,
           TARGET)
    report(benchmark, f"evaluate_run of {SNAPSHOTS} snapshots, prior and curve (zygote started ahead, as in a run) "
           "/ floor", ahead / base, TARGET)
