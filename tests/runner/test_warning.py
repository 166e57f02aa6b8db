"""The scheduler's warning: the runner asks the method for a checkpoint, waits for it, stops, and the resumed
run is the run that was never interrupted, from the checkpoint taken on the warning.

The warning is given the way the Slurm job gives it (harness.run.preemption.WARNING.warn, from its signal
handler), from a thread that watches the run's metrics, while the run trains in this process."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch

from harness.common.distributed import LaunchSpec
from harness.run.preemption import WARNING, checkpoint_wait_s
from harness.run.runner import RunInterrupted, RunRequest, resume_run, run_method

PROJECT = Path(__file__).resolve().parents[2]
TINY = (("d_model", "32"), ("n_layer", "1"), ("n_head", "2"), ("log_every", "1"), ("warmup_steps", "5"))

SKEWED = '''
"""single_model with rank 1 late by 0-20 ms at every step, so the ranks of its DDP group run apart."""
import random
import time

from q0_reference.recipes import Recipe, train_single


class _Late:
    def __init__(self, stream, rank):
        self._stream, self._rank, self._rng = stream, rank, random.Random(rank)

    def next_tokens(self, n_batches=1):
        if self._rank == 1:
            time.sleep(self._rng.uniform(0.0, 0.02))
        return self._stream.next_tokens(n_batches)


class _Skewed:
    def __init__(self, ctx):
        self._ctx = ctx

    def __getattr__(self, name):
        return getattr(self._ctx, name)

    def train_stream(self, *args, **kwargs):
        return _Late(self._ctx.train_stream(*args, **kwargs), self._ctx.rank)


def main(ctx):
    ctx = _Skewed(ctx)
    train_single(ctx, Recipe.from_hparams(ctx.hparams), epochs=ctx.budget, seed=ctx.seed,
                 snapshot_every_epochs=ctx.hparams["snapshot_every_epochs"], resume=ctx.resume_state())
'''


def _lines(run_dir: Path, rank: int = 0) -> list[dict]:
    path = run_dir / ("metrics.jsonl" if rank == 0 else f"metrics.rank{rank}.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _losses(run_dir: Path) -> list[float]:
    return [line["loss"] for line in _lines(run_dir) if "loss" in line]


def _warn_when(run_dir: Path, ready, wait_s: float) -> threading.Thread:
    """Give the warning once `ready(metrics lines)` holds and the run trains (WARNING.warn says so)."""

    def watch():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if ready(_lines(run_dir)) and WARNING.warn(wait_s):
                return
            time.sleep(0.01)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def _snapshot_steps(run_dir: Path) -> set[int]:
    """The optimizer step of each snapshot (its metrics line follows the step's own line)."""
    steps, step = set(), None
    for line in _lines(run_dir):
        if "step" in line:
            step = line["step"]
        elif line.get("event") == "snapshot":
            steps.add(step)
    return steps


def _checkpoint_indices(run_dir: Path) -> dict[int, dict]:
    return {int(p.stem[4:]): json.loads(p.read_text()) for p in (run_dir / "checkpoint").glob("rank*.json")}


def _same_run(resumed: Path, straight: Path) -> None:
    a = json.loads((straight / "record.json").read_text())
    b = json.loads((resumed / "record.json").read_text())
    assert b["status"] == a["status"] == "ok"
    assert b["resumed"] and not a["resumed"]
    assert b["metered"] == a["metered"]
    assert [s["tag"] for s in b["snapshots"]] == [s["tag"] for s in a["snapshots"]]
    assert _losses(resumed) == _losses(straight)  # bitwise
    for snap in a["snapshots"]:
        name = "model.safetensors"
        assert (straight / "snapshots" / snap["tag"] / name).read_bytes() == \
            (resumed / "snapshots" / snap["tag"] / name).read_bytes(), snap["tag"]
    assert b["result"]["val_loss"] == a["result"]["val_loss"]


def test_a_ddp_group_checkpoints_at_one_step_on_the_warning_and_resumes_to_the_uninterrupted_run(
        synthetic_data, tmp_path):
    method = tmp_path / "skewed"
    method.mkdir()
    toml = (PROJECT / "submissions" / "single_model" / "method.toml").read_text()
    (method / "method.toml").write_text(toml.replace('name = "single_model"', 'name = "single_model_skewed"'))
    (method / "train.py").write_text(SKEWED)
    # 2 ranks, 12 sequences a step, 2 per forward: 3 microbatches per rank and step
    overrides = TINY + (("batch_size", "12"), ("micro_batch_size", "2"))
    request = RunRequest(method_dir=method, epochs=2.0, seed=5, overrides=overrides, data_dir=synthetic_data,
                         progress=False, launch=LaunchSpec(nproc_per_node=2))
    straight = run_method(RunRequest(**{**request.__dict__, "out": tmp_path / "straight"}))
    steps = [line["step"] for line in _lines(straight) if "loss" in line]
    first_snapshot = min(_snapshot_steps(straight))

    warned_dir = tmp_path / "warned"
    # warned before the first snapshot, the run's first scheduled checkpoint: any checkpoint is the warning's
    watcher = _warn_when(warned_dir, lambda lines: sum("loss" in line for line in lines) >= 3, wait_s=120)
    with pytest.raises(RunInterrupted):
        run_method(RunRequest(**{**request.__dict__, "out": warned_dir}))
    watcher.join(timeout=5)
    result = WARNING.result
    assert result is not None and result["settled"] and result["ranks_checkpointed"] == [0, 1]
    indices = _checkpoint_indices(warned_dir)
    assert sorted(indices) == [0, 1]
    positions = {rank: index["ledger"]["streams"]["main"]["windows"] for rank, index in indices.items()}
    assert positions[0]["0"] == positions[1]["1"]  # one step for both shards
    step = positions[0]["0"] // 6  # 6 windows per rank and optimizer step
    assert 3 <= step < first_snapshot and step < max(steps)
    record = json.loads((warned_dir / "record.json").read_text())
    assert record["error"]["type"] == "Interrupted"
    assert record["error"]["message"].startswith("pre-empted: the scheduler warned") and \
        "every rank checkpointed" in record["error"]["message"]

    resume_run(warned_dir, progress=False)
    _same_run(warned_dir, straight)
    # the resumed start trained from the warning's step, not from the beginning
    logged = [line["step"] for line in _lines(warned_dir) if "loss" in line]
    assert logged == steps


@pytest.mark.parametrize("ranks", [1, 2])
def test_q0_checkpoints_mid_cycle_with_its_teacher_and_resumes_to_the_uninterrupted_run(ranks, synthetic_data,
                                                                                       tmp_path):
    """One rank, and a DDP group of two (one trajectory, 3 microbatches per rank and step): only the group's
    leader writes the teacher, and its follower must take it from the leader on resume, not re-derive it."""
    overrides = TINY + (("cycle_epochs", "0.5"), ("warmup_cycles", "1"))
    overrides += (("batch_size", "8"),) if ranks == 1 else (("batch_size", "12"), ("micro_batch_size", "2"),
                                                            ("n_trajectories", "1"))
    request = RunRequest(method_dir=PROJECT / "submissions" / "q0", epochs=2.0, seed=7, overrides=overrides,
                         data_dir=synthetic_data, progress=False, launch=LaunchSpec(nproc_per_node=ranks))
    straight = run_method(RunRequest(**{**request.__dict__, "out": tmp_path / "straight"}))
    distilled = [line for line in _lines(straight) if "loss" in line and line.get("distilled")]
    assert len(distilled) >= 4, "the plan must have distilled cycles for this test to mean anything"
    # the first step of a distilled cycle: the request reaches the ranks mid-cycle, with the teacher in use
    snapshots = _snapshot_steps(straight)
    mid = next(line["step"] for line in distilled if line["step"] - 1 in snapshots)

    warned_dir = tmp_path / "warned"
    watcher = _warn_when(warned_dir, lambda lines: any(line.get("step") == mid and "loss" in line for line in lines),
                         wait_s=120)
    with pytest.raises(RunInterrupted):
        run_method(RunRequest(**{**request.__dict__, "out": warned_dir}))
    watcher.join(timeout=5)
    assert WARNING.result["settled"] and WARNING.result["ranks_checkpointed"] == list(range(ranks))
    index = _checkpoint_indices(warned_dir)[0]  # rank 0, the leader, holds the weights
    state = torch.load(warned_dir / "checkpoint" / index["state_file"], weights_only=False)["method_state"]
    assert state["step"] not in snapshots and state["step"] >= mid  # mid-cycle
    assert state["teacher"] is not None  # the teacher travels with a mid-cycle checkpoint

    resume_run(warned_dir, progress=False)
    _same_run(warned_dir, straight)


BIGRAM = """
stream = ctx.train_stream("main", batch_size=4)
state = ctx.resume_state()
torch.manual_seed(ctx.seed)
model = Bigram(ctx.vocab_size)
opt = torch.optim.SGD(model.parameters(), lr=0.5)
if state is not None:
    model.load_state_dict(state["model"])
import time
n = 0
while ctx.remaining_epochs * ctx.epoch_tokens >= 4 * ctx.seq_len:
    ctx.log(loss=step(model, opt, *next(stream)))
    n += 1
{on_step}
    time.sleep(0.005)
ctx.save_snapshot(model, "final")
"""
SILENT = BIGRAM.format(on_step="""    if n == 2:  # a checkpoint of its own; it never looks at ctx.checkpoint_requested
        ctx.checkpoint({"model": model.state_dict()})""")
ANSWERS = BIGRAM.format(on_step="""    if ctx.checkpoint_requested:
        ctx.checkpoint({"model": model.state_dict()})""")


def test_a_method_that_ignores_the_request_is_stopped_when_the_wait_runs_out(make_method, synthetic_data, tmp_path):
    method = make_method(SILENT)
    run_dir = tmp_path / "silent"
    watcher = _warn_when(run_dir, lambda lines: len(lines) >= 5, wait_s=1.5)
    with pytest.raises(RunInterrupted):  # long before its 50 epochs: stopped when the wait ran out
        run_method(RunRequest(method_dir=method, epochs=50.0, seed=1, data_dir=synthetic_data, progress=False,
                              out=run_dir))
    watcher.join(timeout=5)
    result = WARNING.result
    assert result is not None and not result["settled"] and result["ranks_checkpointed"] == []
    assert result["waited_s"] >= 1.5  # it waited the whole wait, then stopped the run
    assert _checkpoint_indices(run_dir)[0]["metrics_lines"] == 2  # its own checkpoint is the one kept
    message = json.loads((run_dir / "record.json").read_text())["error"]["message"]
    assert "0 of 1 rank(s) checkpointed" in message and "resumes from the last checkpoints" in message


def test_the_wait_leaves_room_to_stop_within_the_grace():
    assert checkpoint_wait_s(120) == 90  # the default grace: half a minute to stop, record and requeue
    assert checkpoint_wait_s(30) == 15  # a short grace: half of it
    assert WARNING.warn(10) is False  # nobody trains in this process now: nothing to ask for




def test_sigusr1_to_slowrun_run_is_the_warning(make_method, synthetic_data, tmp_path):
    """Any scheduler can warn `slowrun run` itself: SIGUSR1 asks for the checkpoint, then the run stops."""
    import os
    import signal

    method = make_method(ANSWERS)
    run_dir = tmp_path / "usr1"
    before = signal.getsignal(signal.SIGUSR1)

    def signal_once_training():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if len(_lines(run_dir)) >= 5:
                os.kill(os.getpid(), signal.SIGUSR1)
                return
            time.sleep(0.01)

    threading.Thread(target=signal_once_training, daemon=True).start()
    with pytest.raises(RunInterrupted):
        run_method(RunRequest(method_dir=method, epochs=20.0, seed=1, data_dir=synthetic_data, progress=False,
                              out=run_dir))
    assert WARNING.signalled and WARNING.result["settled"] and WARNING.result["ranks_checkpointed"] == [0]
    assert _checkpoint_indices(run_dir)[0]["metrics_lines"] >= 5  # taken on the warning, not before
    assert signal.getsignal(signal.SIGUSR1) is before  # the runner's handler is gone with the run
