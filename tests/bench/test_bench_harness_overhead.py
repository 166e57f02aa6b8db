"""Harness overhead: `slowrun run` of single_model against a bare PyTorch loop doing the same steps.

The bare loop builds the same GPT with the same seed and optimizer and trains the same number of steps on
windows of the same training split, read straight from the memmap. The harness adds the method's own
process, metered streams with per-epoch document shuffles, logging, a snapshot and a checkpoint per
epoch, and afterwards the evaluation of every snapshot. Reported: the training phase (everything up to the
end of the method's process) over the bare loop, and the whole command including evaluation.

Both sides are whole commands timed by the wall clock, each starting its own Python and importing torch
once for training: the bare loop runs as `python -m tests.bench.test_bench_harness_overhead DATA STEPS
HPARAMS_JSON`.

Run: pytest tests/bench/test_bench_harness_overhead.py -m bench -s
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

from harness.data.prepare import prepare_track
from harness.data.store import TokenStore
from harness.tracks import get_track
from q0_reference.recipes import Recipe
from q0_reference.optim import build_optimizer, set_multipliers
from q0_reference.schedule import WarmupDecaySchedule, steps_for_epochs
from q0_reference.trainer import train_step
from tests.bench.timing import report

EPOCHS = 6.0
ROUNDS = 3


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


def test_harness_overhead_vs_bare_loop(benchmark, tmp_path):
    data_dir = tmp_path / "synthetic"
    prepare_track(get_track("synthetic"), data_dir, progress=False)
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "harness.cli", "run", "submissions/single_model", "--track", "synthetic",
               "--epochs", str(EPOCHS), "--data", str(data_dir), "--out", str(run_dir), "--quiet"]

    # both sides on the same number of intra-op threads, or the ratio measures thread counts
    env = {**os.environ, "SLOWRUN_NUM_THREADS": str(torch.get_num_threads())}

    def harness_run() -> tuple[float, float]:
        """(whole command, its training phase: the command less the evaluation it reports)."""
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env=env)
        wall = time.perf_counter() - started
        record = json.loads((run_dir / "record.json").read_text())
        assert record["status"] == "ok"
        return wall, wall - record["timings"]["eval_s"]

    def bare_run(steps: int, hparams: dict) -> float:
        bare_command = [sys.executable, "-m", "tests.bench.test_bench_harness_overhead", str(data_dir), str(steps),
                        json.dumps(hparams)]
        started = time.perf_counter()
        subprocess.run(bare_command, check=True, env=env)
        return time.perf_counter() - started

    harness_times, bare_times = [], []
    for _ in range(ROUNDS):  # alternate, and keep the least disturbed run of each side
        harness_times.append(harness_run())
        record = json.loads((run_dir / "record.json").read_text())
        hparams = record["hparams"]
        steps = steps_for_epochs(EPOCHS, record["metered"]["epoch_tokens"], hparams["batch_size"] * 128)
        bare_times.append(bare_run(steps, hparams))
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    wall = min(w for w, _ in harness_times)
    training_phase = min(t for _, t in harness_times)
    bare = min(bare_times)
    report(benchmark, "bare_loop_s", bare, unit=" s")
    report(benchmark, "harness_training_phase_s", training_phase, unit=" s")
    report(benchmark, "harness_eval_s", wall - training_phase, unit=" s")
    report(benchmark, "training_overhead_pct", 100 * (training_phase - bare) / bare, target=3, unit="%")
    report(benchmark, "whole_command_overhead_pct", 100 * (wall - bare) / bare, unit="%")
    print(f"rounds: harness {[round(t, 2) for _, t in harness_times]}, bare {[round(b, 2) for b in bare_times]}")


if __name__ == "__main__":
    from pathlib import Path

    from harness.threads import apply_thread_setting

    apply_thread_setting()
    bare_loop(Path(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3]))
