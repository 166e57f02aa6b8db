"""kill -9 in the middle of a run, then --resume: the same run as one that was never interrupted."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from harness.run.runner import RunRequest, prepare_run, resume_run, run_method
from tests.runner.conftest import train_in_subprocess, wait_until_gone

TINY = (("d_model", "32"), ("n_layer", "1"), ("n_head", "2"), ("batch_size", "8"), ("log_every", "1"),
        ("warmup_steps", "5"))


def losses(run_dir: Path) -> list[float]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [line["loss"] for line in lines if "loss" in line]


@pytest.mark.parametrize("method", ["single_model", "q0", pytest.param("naive_ensemble", marks=pytest.mark.slow)])
def test_kill_and_resume_equals_uninterrupted(method, synthetic_data, tmp_path):
    request = RunRequest(method_dir=Path("submissions") / method, epochs=3.0, seed=3, overrides=TINY,
                         data_dir=synthetic_data, progress=False)
    straight = run_method(RunRequest(**{**request.__dict__, "out": tmp_path / "straight"}))

    run_dir = prepare_run(RunRequest(**{**request.__dict__, "out": tmp_path / "killed"}))
    runner = train_in_subprocess(run_dir)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and runner.poll() is None:
        text = metrics.read_text() if metrics.exists() else ""
        if (run_dir / "checkpoint" / "rank0.json").exists() and text.count('"event": "snapshot"') == 1:
            break
        time.sleep(0.05)
    assert runner.poll() is None, "the run ended before it could be killed"
    os.kill(runner.pid, signal.SIGKILL)  # the runner itself: the data server dies with it
    runner.wait()
    wait_until_gone(run_dir)
    assert not (run_dir / "train_result.json").exists()
    resume_run(run_dir, progress=False)

    a = json.loads((straight / "record.json").read_text())
    b = json.loads((run_dir / "record.json").read_text())
    assert b["status"] == a["status"] == "ok"
    assert b["resumed"] and not a["resumed"]
    assert b["metered"] == a["metered"]
    assert [s["tag"] for s in b["snapshots"]] == [s["tag"] for s in a["snapshots"]]
    assert losses(run_dir) == losses(straight)  # bitwise: floats compared exactly
    for snap in a["snapshots"]:
        weights_a = (straight / "snapshots" / snap["tag"] / "model.safetensors").read_bytes()
        weights_b = (run_dir / "snapshots" / snap["tag"] / "model.safetensors").read_bytes()
        assert weights_a == weights_b, snap["tag"]
    assert b["result"]["val_loss"] == a["result"]["val_loss"]


KILLED_ONCE = """
import os, signal, time
state = ctx.resume_state()
torch.manual_seed(ctx.seed)
model = Bigram(ctx.vocab_size)
opt = torch.optim.SGD(model.parameters(), lr=0.5)
stream = ctx.train_stream("main", batch_size=16)
if state is None:
    while ctx.epochs < 0.5:
        step(model, opt, *next(stream))
    ctx.save_snapshot(model, "half")
    ctx.checkpoint({"model": model.state_dict()})
    time.sleep(1.5)  # work after the checkpoint: lost to the model, not to the clock
    os.kill(os.getpid(), signal.SIGKILL)
model.load_state_dict(state["model"])
while ctx.remaining_epochs * ctx.epoch_tokens >= 16 * ctx.seq_len:
    step(model, opt, *next(stream))
ctx.save_snapshot(model, "full")
"""


def test_a_killed_method_process_records_what_was_metered_and_resume_keeps_its_time(make_method, synthetic_data,
                                                                                     tmp_path):
    method = make_method(KILLED_ONCE)
    run_dir = run_method(RunRequest(method_dir=method, track="synthetic", epochs=1.0, data_dir=synthetic_data,
                                    out=tmp_path / "run", progress=False))
    first = json.loads((run_dir / "record.json").read_text())
    assert first["status"] == "failed" and first["error"]["type"] == "WorkerDied"
    assert 0.5 <= first["metered"]["epochs"] < 0.6  # the harness's count, not 0
    assert [s["tag"] for s in first["snapshots"]] == ["half"] and first["snapshots"][0]["val_loss"] < 6.238  # log 512
    assert "signal 9" in first["error"]["message"]
    assert first["timings"]["train_s"] >= 1.5

    resume_run(run_dir, progress=False)
    second = json.loads((run_dir / "record.json").read_text())
    assert second["status"] == "ok" and second["resumed"]
    assert [s["tag"] for s in second["snapshots"]] == ["half", "full"]
    sessions = json.loads((run_dir / "sessions.json").read_text())["train_s"]
    assert len(sessions) == 2
    assert second["timings"]["train_s"] >= first["timings"]["train_s"] + sessions[1] - 1e-6
