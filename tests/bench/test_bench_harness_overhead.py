"""Harness overhead: `slowrun run` of single_model against a bare PyTorch loop doing the same steps.

The bare loop builds the same GPT with the same seed and optimizer and trains the same number of steps on
windows of the same training split, read straight from the memmap. The harness adds the method's own
process, metered streams with per-epoch document shuffles, logging, a snapshot and a checkpoint per
epoch, and afterwards the evaluation of every snapshot. Reported: the training phase (everything up to the
end of the method's process) over the bare loop, and the whole command including evaluation.

Both sides are whole commands timed by the wall clock, each starting its own Python and importing torch
once for training: the bare loop runs as `python -m tests.bench.test_bench_harness_overhead DATA STEPS
HPARAMS_JSON`.

How the ratio is kept honest on a 2-core machine shared with other work:

- Both sides run torch on one intra-op thread. With two threads on two shared cores an OpenMP barrier
  waits for whichever thread the scheduler parked, and the same 384 steps took anywhere from 90 s to
  820 s: the ratio measured other people's jobs. One thread also leaves the harness's own processes
  (the data server's thread, the supervisor, the evaluation worker started ahead) a core, as a GPU
  machine's spare cores do.
- Rounds are interleaved, and each round runs its pair back to back in alternating order (harness
  first, then bare first), so slow drift in the machine's load falls on both sides alike.
- The figure held to the target is the median over rounds of the paired overhead (harness training
  phase / bare loop - 1, both from the same round). A pair shares the load of its minutes, so its ratio
  cancels most of it; the median then drops a round that one burst of other work landed in on one side
  only. Best-of-N (the fastest harness run over the fastest bare run) is printed beside it: it compares
  runs from different minutes and swings with whichever side happened to get a quiet one. Three rounds
  by default; `SLOWRUN_BENCH_ROUNDS=5` narrows the median where the machine's speed drifts (on a shared
  virtual machine the bare loop alone ranged 45-55 s between rounds of one quiet run).

`test_request_costs` measures the per-step part alone, in seconds instead of minutes: one small-track
batch (8 x 129) through the data server to a client in another process, a `ctx.log` line and a status
call, against the same batch cut in-process by the meter's own stream.

Run: pytest tests/bench/test_bench_harness_overhead.py -m bench -s
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from harness.data.prepare import prepare_track
from harness.data.store import TokenStore
from harness.rules.tracks import get_track
from q0_reference.recipes import Recipe
from q0_reference.optim import build_optimizer, set_multipliers
from q0_reference.schedule import WarmupDecaySchedule, steps_for_epochs
from q0_reference.trainer import train_step
from tests.bench.timing import report

EPOCHS = 6.0
ROUNDS = int(os.environ.get("SLOWRUN_BENCH_ROUNDS", "3"))
THREADS = 1
REQUESTS = 3000  # per kind, in test_request_costs


def bare_loop(data_dir, steps: int, hparams: dict) -> float:
    manifest = json.loads((data_dir / "manifest.json").read_text())
    train = TokenStore.open(data_dir, "train").documents(manifest["fitness"]["documents"])
    recipe = Recipe.from_hparams(hparams)

    class Shape:  # what Recipe.model reads
        vocab_size = train.vocab_size
        seq_len = 128

    torch.manual_seed(0)
    model = recipe.model(Shape)
    optimizer = build_optimizer(model, recipe.optimizer)
    schedule = WarmupDecaySchedule(steps, warmup_steps=recipe.warmup_steps)
    tokens = np.asarray(train.tokens, dtype=np.int64)
    width = 129
    start = time.perf_counter()
    for step in range(steps):
        mult = schedule.at(step)
        set_multipliers(optimizer, mult.lr, mult.weight_decay)
        offsets = (np.arange(step * 8, step * 8 + 8) * 128) % (tokens.size - width)
        batch = torch.from_numpy(np.stack([tokens[o : o + width] for o in offsets]))
        train_step(model, optimizer, batch[:, :-1], batch[:, 1:], max_grad_norm=recipe.grad_clip)
    return time.perf_counter() - start


def paired_overheads(harness: list[float], bare: list[float]) -> list[float]:
    """Per round: harness / bare - 1, each pair timed back to back."""
    return [h / b - 1 for h, b in zip(harness, bare)]


def test_paired_overheads_by_hand():
    import pytest

    paired = paired_overheads([103.0, 99.0, 120.0], [100.0, 100.0, 100.0])
    assert paired == pytest.approx([0.03, -0.01, 0.20])
    assert statistics.median(paired) == pytest.approx(0.03)  # the 20% round is one disturbed pair, dropped


def test_harness_overhead_vs_bare_loop(benchmark, tmp_path):
    data_dir = tmp_path / "synthetic"
    prepare_track(get_track("synthetic"), data_dir, progress=False)
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "harness.cli", "run", "submissions/single_model", "--track", "synthetic",
               "--epochs", str(EPOCHS), "--data", str(data_dir), "--out", str(run_dir), "--quiet"]
    env = {**os.environ, "SLOWRUN_NUM_THREADS": str(THREADS)}  # both sides alike (see the module docstring)

    def harness_run() -> tuple[float, float]:
        """(whole command, its training phase: the command less the evaluation it reports)."""
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env=env)
        wall = time.perf_counter() - started
        record = json.loads((run_dir / "record.json").read_text())
        assert record["status"] == "ok"
        harness_loops.append(record["timings"]["train_s"])  # the server's clock: first batch to the end
        return wall, wall - record["timings"]["eval_s"]

    def bare_run(steps: int, hparams: dict) -> float:
        bare_command = [sys.executable, "-m", "tests.bench.test_bench_harness_overhead", str(data_dir), str(steps),
                        json.dumps(hparams)]
        started = time.perf_counter()
        out = subprocess.run(bare_command, check=True, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        bare_loops.append(float(out.stdout.strip().splitlines()[-1]))
        return wall

    harness_times: list[tuple[float, float]] = []
    bare_times: list[float] = []
    harness_loops: list[float] = []  # the training loops alone, for splitting the overhead into its parts
    bare_loops: list[float] = []
    steps = hparams = None
    for round_ in range(ROUNDS):
        if round_ % 2 == 0:  # harness first (round 0 also learns the step count from its record)
            harness_times.append(harness_run())
            if steps is None:
                record = json.loads((run_dir / "record.json").read_text())
                hparams = record["hparams"]
                steps = steps_for_epochs(EPOCHS, record["metered"]["epoch_tokens"], hparams["batch_size"] * 128)
            bare_times.append(bare_run(steps, hparams))
        else:
            bare_times.append(bare_run(steps, hparams))
            harness_times.append(harness_run())
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    training = [t for _, t in harness_times]
    paired = paired_overheads(training, bare_times)
    whole = paired_overheads([w for w, _ in harness_times], bare_times)
    report(benchmark, "bare_loop_s (median)", statistics.median(bare_times), unit=" s")
    report(benchmark, "harness_training_phase_s (median)", statistics.median(training), unit=" s")
    report(benchmark, "harness_eval_s (median)",
           statistics.median(w - t for w, t in harness_times), unit=" s")
    report(benchmark, "training_overhead_pct (median of paired)", 100 * statistics.median(paired), target=3, unit="%")
    report(benchmark, "training_overhead_pct (best of N)", 100 * (min(training) / min(bare_times) - 1), unit="%")
    report(benchmark, "whole_command_overhead_pct (median of paired)", 100 * statistics.median(whole), unit="%")
    # Where it goes: the training loop (the harness's clock, first batch to end, over the bare loop's own
    # timer) and the seconds outside it (start-up and teardown: processes, imports, the sandbox).
    loop = paired_overheads(harness_loops, bare_loops)
    outside = [(t - hl) - (b - bl) for t, hl, b, bl in zip(training, harness_loops, bare_times, bare_loops)]
    report(benchmark, "training_loop_overhead_pct (median of paired)", 100 * statistics.median(loop), unit="%")
    report(benchmark, "outside_the_loop_extra_s (median)", statistics.median(outside), unit=" s")
    print(f"rounds (alternating order): harness training phase {[round(t, 2) for t in training]}, "
          f"bare {[round(b, 2) for b in bare_times]}, paired overhead {[f'{100 * p:.2f}%' for p in paired]}")


def request_client(address: str, token: str, requests: int) -> dict:
    """As the method: connect as rank 0, then time each kind of request through the RunContext (seconds
    per request)."""
    from harness.confined.context import RunContext
    from harness.wire.framing import Channel
    from harness.confined.method_process import connect

    channel = Channel(connect(address))
    channel.send({"op": "hello", "token": token, "rank": 0, "pid": os.getpid()})
    reply, _ = channel.recv()
    ctx = RunContext(channel, reply["run"])
    stream = ctx.train_stream("bench", 8)
    next(stream)  # the first epoch's document order is built here, not timed
    costs = {}
    start = time.perf_counter()
    for _ in range(requests):
        inputs, targets = next(stream)
    costs["batch"] = (time.perf_counter() - start) / requests
    assert inputs.dtype == torch.int64 and inputs.shape == (8, 128)
    # an optimizer step of 8 microbatches: 8 requests, as before `next_tokens`, against one
    start = time.perf_counter()
    for _ in range(requests // 8):
        [next(stream) for _ in range(8)]
    costs["step_of_8_by_batch"] = (time.perf_counter() - start) / (requests // 8)
    start = time.perf_counter()
    for _ in range(requests // 8):
        tokens = stream.next_tokens(8)
    costs["step_of_8_in_one"] = (time.perf_counter() - start) / (requests // 8)
    assert tokens.shape == (8, 8, 129)
    start = time.perf_counter()
    for step in range(requests):
        ctx.log(step=step, loss=2.5, lr_mult=0.5, tokens_per_s=5600.0)
    ctx.snapshot_tags()  # a reply-bearing request: every log line before it has been handled
    costs["log"] = (time.perf_counter() - start) / requests
    start = time.perf_counter()
    for _ in range(requests):
        ctx.epochs
    costs["status"] = (time.perf_counter() - start) / requests
    channel.send({"op": "end", "status": "ok"})
    channel.recv()
    return costs


def test_request_costs(benchmark, tmp_path):
    from harness.server import DataServer, ServerSpec
    from tests.bench.timing import best_time, in_process_stream

    data_dir = tmp_path / "synthetic"
    track = get_track("synthetic")
    prepare_track(track, data_dir, progress=False)
    store = TokenStore.open(data_dir, "train")
    next_batch = in_process_stream(store, track.seq_len, 8)
    next_batch()
    in_process = best_time(lambda: [next_batch() for _ in range(REQUESTS)]) / REQUESTS

    rounds = []
    for round_ in range(3):
        server = DataServer(ServerSpec(run_dir=tmp_path / f"run{round_}", data_dir=data_dir, track=track, budget=1e6,
                                       seed=0, hparams={}, device="cpu", method_dir=tmp_path, entry="train:main",
                                       fitness_docs=0, progress=False))
        address = server.start()
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
               "SLOWRUN_NUM_THREADS": str(THREADS)}
        out = subprocess.run([sys.executable, "-m", "tests.bench.test_bench_harness_overhead", "--requests", address,
                              server.token, str(REQUESTS)], env=env, capture_output=True, text=True, check=True)
        server.stop()
        rounds.append(json.loads(out.stdout.strip().splitlines()[-1]))
        lines = (tmp_path / f"run{round_}" / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["step"] for line in lines] == list(range(REQUESTS))  # every line, in order
    best = {kind: min(r[kind] for r in rounds) for kind in rounds[0]}
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    report(benchmark, "in-process batch (us)", 1e6 * in_process, unit="")
    report(benchmark, "batch through the server (us)", 1e6 * best["batch"], unit="")
    report(benchmark, "per-batch overhead (us)", 1e6 * (best["batch"] - in_process), unit="")
    report(benchmark, "a step of 8 microbatches, 8 requests (us)", 1e6 * best["step_of_8_by_batch"], unit="")
    report(benchmark, "a step of 8 microbatches, one next_tokens (us)", 1e6 * best["step_of_8_in_one"], unit="")
    report(benchmark, "one request per step / one per microbatch",
           best["step_of_8_in_one"] / best["step_of_8_by_batch"], unit="x")
    report(benchmark, "ctx.log (us)", 1e6 * best["log"], unit="")
    report(benchmark, "ctx.epochs status call (us)", 1e6 * best["status"], unit="")


if __name__ == "__main__":
    if sys.argv[1] == "--requests":
        print(json.dumps(request_client(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
    else:
        from harness.common.threads import apply_thread_setting

        apply_thread_setting()
        print(bare_loop(Path(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])))
