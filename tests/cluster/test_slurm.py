"""`slowrun run --slurm` on a real one-node Slurm: a 2-rank CPU job requeued mid-run, or warned before its end,
resumes by itself and ends with the record of a run that was never interrupted, saying how often it was
pre-empted and whether it checkpointed on the warning."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.cluster.job import run_state
from harness.cluster.nodes import free_port_pair, job_port
from harness.cluster.slurm import SlurmError, SlurmOptions, job_script
from harness.common.distributed import LaunchSpec
from harness.run.runner import RunRequest, run_method

PROJECT = Path(__file__).resolve().parents[2]
TINY = (("d_model", "32"), ("n_layer", "1"), ("n_head", "2"), ("batch_size", "8"), ("log_every", "1"),
        ("warmup_steps", "5"), ("micro_batch_size", "2"))


def test_the_job_script_asks_for_requeue_the_warning_and_the_resources(tmp_path):
    script = job_script(tmp_path / "run", SlurmOptions(partition="gpu", gpus_per_node=8, time="3:00:00",
                                                       account="lab", grace_s=300), nproc_per_node=8,
                        python="/venv/bin/python")
    for line in ("#SBATCH --requeue", "#SBATCH --signal=B:USR1@300", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --partition=gpu", "#SBATCH --time=3:00:00", "#SBATCH --account=lab",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --nodes=1"):
        assert line in script.splitlines()
    assert script.rstrip().endswith(f"exec /venv/bin/python -m harness.cluster.job {(tmp_path / 'run').resolve()}")
    with pytest.raises(SlurmError, match="at least 1"):
        SlurmOptions(nodes=0)
    two = job_script(tmp_path / "run", SlurmOptions(nodes=2), nproc_per_node=4).splitlines()
    assert "#SBATCH --nodes=2" in two and "#SBATCH --ntasks-per-node=1" in two


def test_job_ports_differ_between_jobs_and_leave_the_next_port_to_the_data_server():
    assert job_port(0) == 20000 and job_port(1) == 20002 and job_port(9999) == 39998
    assert job_port(10000) == 20000  # wraps inside the range
    assert all(job_port(j) % 2 == 0 and job_port(j) + 1 < 65536 for j in range(0, 30000, 7))


def test_a_port_pair_taken_on_node_0_is_stepped_over():
    import socket

    first = free_port_pair(job_port(4321))
    with socket.socket() as held:  # another job holds the data server's port of the pair
        held.bind(("0.0.0.0", first + 1))
        assert free_port_pair(first) > first  # the next free pair (first + 2 unless that is taken too)
    assert free_port_pair(first) == first  # free again


def test_a_run_is_new_started_or_final_by_what_its_folder_holds(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    assert run_state(run) == "new"
    (run / "metrics.jsonl").write_text("")
    assert run_state(run) == "started"
    (run / "record.json").write_text(json.dumps({"status": "failed", "error": {"type": "Interrupted"}}))
    assert run_state(run) == "started"
    (run / "record.json").write_text(json.dumps({"status": "ok", "error": None}))
    assert run_state(run) == "final"
    (run / "record.json").write_text(json.dumps({"status": "failed", "error": {"type": "WorkerDied"}}))
    assert run_state(run) == "final"
    (run / "slurm").mkdir()
    (run / "slurm" / "job.json").write_text(json.dumps({"starts": [{"interrupted": True}]}))
    assert run_state(run) == "started"  # the job's last start was stopped, whatever the record says of how


def _losses(run_dir: Path) -> list[float]:
    return [line["loss"] for line in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if "loss" in line]


def _wait(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _straight(synthetic_data: Path, out: Path, epochs: int, seed: int, nproc: int = 2) -> dict:
    """The same run trained in this process on one node, never interrupted: the record to compare with."""
    run_dir = run_method(RunRequest(method_dir=PROJECT / "submissions" / "single_model", epochs=float(epochs),
                                    seed=seed, overrides=TINY, data_dir=synthetic_data, progress=False, out=out,
                                    launch=LaunchSpec(nproc_per_node=nproc)))
    return json.loads((run_dir / "record.json").read_text())


def _submit(synthetic_data: Path, out: Path, epochs: int, seed: int, *flags: str) -> str:
    """`slowrun run single_model ... --slurm FLAGS`, as a user types it; the job id."""
    command = [sys.executable, "-m", "harness.cli", "run", str(PROJECT / "submissions" / "single_model"),
               "--track", "synthetic", "--epochs", str(epochs), "--seed", str(seed), "--data", str(synthetic_data),
               "--quiet", "--out", str(out), "--slurm", *flags] + [a for k, v in TINY for a in ("--set", f"{k}={v}")]
    submitted = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT, timeout=300)
    assert submitted.returncode == 0, submitted.stderr
    return json.loads((out / "slurm" / "job.json").read_text())["job_id"]


def _warn_after_three_steps(out: Path, job_id: str) -> None:
    """The scheduler's warning once the run trains, before its first snapshot (its first scheduled checkpoint):
    the batch shell alone gets USR1, as with --signal=B:USR1@GRACE."""
    _wait(lambda: (out / "metrics.jsonl").exists() and len(_losses(out)) >= 3, 240, "three training steps")
    warned = subprocess.run(["scancel", "--batch", "--signal=USR1", job_id], capture_output=True, text=True)
    assert warned.returncode == 0, warned.stderr


def _final_record(out: Path) -> tuple[dict, str]:
    """The record once the job has finished the run (an interrupted start's record does not count), and the
    job's output, for the assertions' messages."""
    path = out / "record.json"

    def final():
        if not path.exists():
            return None
        record = json.loads(path.read_text())
        return record if (record.get("error") or {}).get("type") != "Interrupted" else None

    record = _wait(final, 300, "the job's final record")
    return record, "\n".join(p.read_text() for p in (out / "slurm").glob("slurm-*.out"))


def _same_run(record: dict, straight: dict, out: Path, log: str) -> None:
    assert record["status"] == straight["status"] == "ok", log[-3000:]
    assert record["metered"] == straight["metered"]
    assert _losses(out) == _losses(out.parent / "straight")  # bitwise: the contract's resume is exact
    assert record["result"]["val_loss"] == straight["result"]["val_loss"]


def _status(out: Path) -> dict:
    done = subprocess.run([sys.executable, "-m", "harness.cli", "status", str(out)], capture_output=True, text=True,
                          cwd=PROJECT, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_requeued_job_resumes_by_itself_to_the_uninterrupted_record(slurm_cluster, synthetic_data, tmp_path):
    straight = _straight(synthetic_data, tmp_path / "straight", epochs=3, seed=3)
    out = tmp_path / "slurm-run"
    job_id = _submit(synthetic_data, out, 3, 3, "--nproc-per-node", "2", "--grace", "30")
    # pre-empt it once it has a checkpoint and a snapshot: Slurm stops it (SIGTERM) and starts it again
    _wait(lambda: (out / "checkpoint").exists() and any((out / "checkpoint").glob("rank*.json"))
          and (out / "snapshots").exists() and any((out / "snapshots").iterdir()), 240, "the first checkpoint")
    requeue = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    assert requeue.returncode == 0, requeue.stderr
    record, log = _final_record(out)
    _same_run(record, straight, out, log)
    assert record["resumed"] and record["scheduler"]["preemptions"] == 1 and record["scheduler"]["starts"] == 2
    assert record["scheduler"]["job_id"] == job_id
    assert [s["tag"] for s in record["snapshots"]] == [s["tag"] for s in straight["snapshots"]]
    assert record["timings"]["train_s"] > 0  # the training time of both starts together
    assert _status(out)["preemptions"] == 1


def test_a_warned_job_checkpoints_requeues_itself_and_resumes_from_that_checkpoint(slurm_cluster, synthetic_data,
                                                                                   tmp_path):
    straight = _straight(synthetic_data, tmp_path / "straight", epochs=3, seed=4)
    out = tmp_path / "slurm-run"
    job_id = _submit(synthetic_data, out, 3, 4, "--nproc-per-node", "2", "--grace", "60")
    _warn_after_three_steps(out, job_id)
    record, log = _final_record(out)
    _same_run(record, straight, out, log)
    scheduler = record["scheduler"]
    assert (scheduler["starts"], scheduler["preemptions"], scheduler["warnings"],
            scheduler["checkpointed_on_warning"]) == (2, 1, 1, 1), log[-3000:]
    first = json.loads((out / "slurm" / "job.json").read_text())["starts"][0]
    assert first["interrupted"] and first["checkpoint_on_warning"]["ranks_checkpointed"] == [0, 1]
    told = _status(out)
    assert (told["starts"], told["warnings"], told["checkpointed_on_warning"], told["record_status"]) == (2, 1, 1, "ok")


def test_a_two_node_job_trains_across_both_nodes_to_the_one_node_record(slurm_cluster, synthetic_data, tmp_path):
    """Two Slurm nodes, one rank each: node 0 holds the data server, node 1 is started by srun and joins it;
    the record is the one of the same 2-rank run on one node."""
    straight = _straight(synthetic_data, tmp_path / "straight", epochs=2, seed=6)
    out = tmp_path / "two-nodes"
    _submit(synthetic_data, out, 2, 6, "--nproc-per-node", "1", "--nodes", "2")
    record, log = _final_record(out)
    _same_run(record, straight, out, log)
    launch = json.loads((out / "run.json").read_text())["launch"]
    first = job_port(record["scheduler"]["job_id"])
    assert launch["nnodes"] == 2 and launch["master_port"] in range(first, first + 128, 2)  # the job's, or a free pair after
    assert (out / "supervisor-node1.json").exists(), log[-3000:]  # node 1's ranks ran under its own supervisor
    assert "node 1: its ranks ended (exited, exit code 0)" in log


def test_a_warned_two_node_job_checkpoints_on_both_nodes_and_resumes_to_the_uninterrupted_record(
        slurm_cluster, synthetic_data, tmp_path):
    straight = _straight(synthetic_data, tmp_path / "straight", epochs=3, seed=8)
    out = tmp_path / "two-nodes"
    job_id = _submit(synthetic_data, out, 3, 8, "--nproc-per-node", "1", "--nodes", "2", "--grace", "60")
    _warn_after_three_steps(out, job_id)
    record, log = _final_record(out)
    _same_run(record, straight, out, log)
    scheduler = record["scheduler"]
    assert (scheduler["starts"], scheduler["warnings"], scheduler["checkpointed_on_warning"]) == (2, 1, 1), log[-3000:]
    first = json.loads((out / "slurm" / "job.json").read_text())["starts"][0]
    assert first["checkpoint_on_warning"]["ranks_checkpointed"] == [0, 1]  # rank 1 is node 1's
    assert "node 0 stopped the job" in log  # node 1's runner stopped its held rank when node 0 stopped
