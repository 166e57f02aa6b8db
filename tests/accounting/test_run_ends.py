"""How a distributed run ends: through the data server, never through a job-wide collective.

Rank groups finish independently (a group done long before another is not aborted by a collective's
timeout), a failed rank ends the whole job at once (its peers are not left in an all-reduce until the
collective gives up), two runs share a machine (torchrun picks a free rendezvous port), and `slowrun run`
exits with the run's status.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from harness.common.distributed import COLLECTIVE_TIMEOUT_ENV, LaunchSpec
from harness.formats.records import EXIT_CODES
from harness.run.runner import RunRequest, run_method

METHODS = Path(__file__).parent / "methods"
PROJECT = Path(__file__).resolve().parents[2]


def read(run_dir: Path) -> dict:
    return json.loads((run_dir / "record.json").read_text())


def test_a_group_that_finishes_long_before_another_is_not_aborted(synthetic_data, tmp_path, monkeypatch):
    """Group 1 trains 16 s longer than group 0 with the collective timeout at 10 s: any job-wide barrier or
    gather in a collective would time out. The groups meet in ctx.gather, which waits on the server. (The
    timeout also bounds the ranks' rendezvous, so it leaves room for four ranks starting on a busy machine.)"""
    monkeypatch.setenv("SLOWRUN_NUM_THREADS", "1")
    monkeypatch.setenv(COLLECTIVE_TIMEOUT_ENV, "10")
    run_dir = run_method(RunRequest(method_dir=METHODS / "groups_apart", track="synthetic", epochs=1.0,
                                    data_dir=synthetic_data, out=tmp_path / "run", progress=False,
                                    overrides=(("late_s", "16"),), launch=LaunchSpec(nproc_per_node=4),
                                    timeout_s=240))
    record = read(run_dir)
    assert record["status"] == "ok", record["error"]
    assert sorted(m["tag"] for m in record["ensemble"]["members"]) == ["g0", "g1"]
    assert record["timings"]["train_s"] >= 16.0  # the late group did train on past the early one


def test_a_rank_left_in_a_rank_groups_collective_fails_at_the_collective_timeout(synthetic_data, tmp_path,
                                                                                   monkeypatch):
    """Group 1's leader all-reduces once more than its peer. A rank group's process group has the job's
    collective timeout (10 s here), not torch's 30-minute default for `new_group`: the leader's gloo
    all-reduce fails and the run ends `failed`, long before its 120 s --timeout would end it `timeout`."""
    monkeypatch.setenv("SLOWRUN_NUM_THREADS", "1")
    monkeypatch.setenv(COLLECTIVE_TIMEOUT_ENV, "10")
    run_dir = run_method(RunRequest(method_dir=METHODS / "groups_apart", track="synthetic", epochs=1.0,
                                    data_dir=synthetic_data, out=tmp_path / "run", progress=False,
                                    overrides=(("late_s", "1"), ("stray", "true")),
                                    launch=LaunchSpec(nproc_per_node=4), timeout_s=120))
    record = read(run_dir)
    assert record["status"] == "failed", record["error"]
    assert record["error"]["message"].startswith("rank 2: "), record["error"]


def test_a_failed_rank_ends_the_job_at_once(synthetic_data, tmp_path, monkeypatch):
    """Rank 0 waits in an all-reduce that rank 1 never joins (gloo's default timeout is 30 minutes): the
    server sees rank 1 fail and the runner stops the job, well inside the run's 90 s --timeout (a hang would
    end the run as `timeout`)."""
    monkeypatch.setenv("SLOWRUN_NUM_THREADS", "1")
    run_dir = run_method(RunRequest(method_dir=METHODS / "one_rank_fails", track="synthetic", epochs=1.0,
                                    data_dir=synthetic_data, out=tmp_path / "run", progress=False,
                                    launch=LaunchSpec(nproc_per_node=2), timeout_s=90))
    record = read(run_dir)
    assert record["status"] == "failed", record["error"]
    assert record["error"]["type"] == "RuntimeError"
    assert record["error"]["message"].startswith("rank 1: rank 1 fails on purpose")
    assert [i["kind"] for i in record["incidents"]] == ["stopped"]
    assert record["metered"]["train_tokens"] == 2 * 2 * record["track"]["seq_len"]


def _cli_run(method: Path, data: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "SLOWRUN_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(method), "--track", "synthetic",
                             "--data", str(data), "--out", str(out), "--quiet", *extra],
                            cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_distributed_runs_side_by_side_both_end_ok(synthetic_data, tmp_path):
    """Both on one machine at once, each with two ranks: no shared rendezvous port, no shared socket."""
    args = ("--epochs", "0.5", "--nproc-per-node", "2", "--set", "accumulation=3", "--timeout", "240")
    runs = [_cli_run(METHODS / "lockstep", synthetic_data, tmp_path / f"run{i}", *args) for i in range(2)]
    for i, proc in enumerate(runs):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        record = read(tmp_path / f"run{i}")
        assert record["status"] == "ok"
        assert record["metered"]["train_tokens"] == sum(record["metered"]["per_stream"].values()) > 0


def test_slowrun_run_exits_with_the_runs_status(synthetic_data, tmp_path):
    proc = _cli_run(METHODS / "one_rank_fails", synthetic_data, tmp_path / "run", "--epochs", "1",
                    "--nproc-per-node", "2", "--timeout", "90")
    _, err = proc.communicate(timeout=200)
    assert proc.returncode == EXIT_CODES["failed"] == 7
    assert "run ended with status failed" in err
    assert read(tmp_path / "run")["status"] == "failed"
    # `slowrun eval` of the same run folder says the same
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    again = subprocess.run([sys.executable, "-m", "harness.cli", "eval", str(tmp_path / "run"), "--quiet"],
                           cwd=PROJECT, env=env, capture_output=True, text=True, timeout=200)
    assert again.returncode == 7, again.stderr[-2000:]
