"""`slowrun run DIR --out RUN_DIR --resume auto`: the one command a job script runs at every start."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness.errors import SlowrunError
from harness.run.preemption import WARNING
from harness.run.runner import RunInterrupted, RunRequest, prepare_run, run_or_resume, run_state
from tests.runner.test_warning import ANSWERS as STEPPING  # a method that checkpoints when asked

PROJECT = Path(__file__).resolve().parents[2]


def _request(method: Path, synthetic_data: Path, out: Path, seed: int = 2) -> RunRequest:
    return RunRequest(method_dir=method, epochs=1.0, seed=seed, data_dir=synthetic_data, progress=False, out=out)


def test_auto_starts_trains_a_prepared_run_resumes_an_interrupted_one_and_leaves_a_finished_one(
        make_method, synthetic_data, tmp_path):
    method = make_method(STEPPING)
    # a new folder: the run starts
    fresh = tmp_path / "fresh"
    run_or_resume(_request(method, synthetic_data, fresh))
    assert json.loads((fresh / "record.json").read_text())["status"] == "ok" and run_state(fresh) == "final"

    # a finished run: left as it is
    before = (fresh / "record.json").stat().st_mtime_ns
    run_or_resume(_request(method, synthetic_data, fresh))
    assert (fresh / "record.json").stat().st_mtime_ns == before

    # prepared elsewhere (the way `--slurm` prepares it), never started: trained
    prepared = prepare_run(_request(method, synthetic_data, tmp_path / "prepared"))
    assert run_state(prepared) == "new"
    run_or_resume(_request(method, synthetic_data, prepared))
    assert json.loads((prepared / "record.json").read_text())["status"] == "ok"

    # interrupted (here by the scheduler's warning, once it trains): resumed from its checkpoint
    stopped = tmp_path / "stopped"

    def warn_once_training():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if (stopped / "metrics.jsonl").exists() and WARNING.warn(60):
                return
            time.sleep(0.01)

    threading.Thread(target=warn_once_training, daemon=True).start()
    with pytest.raises(RunInterrupted):
        run_or_resume(_request(method, synthetic_data, stopped))
    assert run_state(stopped) == "started"
    run_or_resume(_request(method, synthetic_data, stopped))
    record = json.loads((stopped / "record.json").read_text())
    assert record["status"] == "ok" and record["resumed"]
    assert record["metered"] == json.loads((fresh / "record.json").read_text())["metered"]


def test_auto_refuses_a_folder_that_holds_another_run(make_method, synthetic_data, tmp_path):
    method = make_method(STEPPING)
    prepared = prepare_run(_request(method, synthetic_data, tmp_path / "run", seed=2))
    with pytest.raises(SlowrunError, match=r"holds another run \(its seed differs from"):
        run_or_resume(_request(method, synthetic_data, prepared, seed=3))
    assert run_state(prepared) == "new"  # nothing was started in it


def test_auto_from_the_command_line_needs_the_method_and_out(tmp_path):
    done = subprocess.run([sys.executable, "-m", "harness.cli", "run", "--resume", "auto"], capture_output=True,
                          text=True, cwd=PROJECT, timeout=120)
    assert done.returncode == 2 and "--resume auto goes with the method directory and --out" in done.stderr
