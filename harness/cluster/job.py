"""The body of a run's Slurm job: train the run, or resume it, and requeue on the scheduler's warning.

    python -m harness.cluster.job RUN_DIR

Started again after a requeue (a pre-emption, a node failure, ``scontrol requeue``), it finds the run
started and resumes it from its last checkpoint: the data server restores the meter, the snapshots and
the training clock from the run folder, so the record is that of one run, with every start listed. A run
whose record is final (anything but an interruption) is left as it is.

Slurm warns a job before its time limit (and at a pre-emption, where the cluster sets
``SlurmctldParameters=preempt_send_user_signal``) with the signal the script asks for: USR1, the grace
before. The job then asks the method for a checkpoint (harness/run/preemption.py: the ranks see
``ctx.checkpoint_requested`` on their next batch), waits for every rank's within the grace, stops the
method's processes (the run's record says ``Interrupted``) and requeues itself, so the run continues in its
next start from that checkpoint without anyone resubmitting it. A warning while the run is not training
(evaluating, starting) stops it at once. A SIGTERM from Slurm itself (``scontrol requeue``, ``scancel``, a
pre-emption without the user signal) reaches the method's processes too, so the run stops at once and
resumes from the last checkpoint the method took on its own; Slurm decides whether the job starts again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from harness.common.atomic import write_json_atomic
from harness.cluster.slurm import DEFAULT_GRACE_S, JOB_FILE, JOB_FOLDER
from harness.run.preemption import WARNING
from harness.formats.records import utc_timestamp


def run_state(run_dir: Path) -> str:
    """The run's state as harness.run.runner.run_state tells it, except that a run whose job's last start was
    stopped is resumed whatever its record says of how ('new', 'started' or 'final')."""
    from harness.run.runner import run_state as folder_state

    state = folder_state(run_dir)
    job_path = run_dir / JOB_FOLDER / JOB_FILE
    if state == "final" and job_path.exists():
        starts = json.loads(job_path.read_text(encoding="utf-8")).get("starts", [])
        if starts and starts[-1].get("interrupted"):
            return "started"
    return state


def _note_start(run_dir: Path, resumed: bool) -> dict:
    path = run_dir / JOB_FOLDER / JOB_FILE
    job = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"job_id": None, "starts": []}
    start = {"job_id": os.environ.get("SLURM_JOB_ID"), "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", 0)),
             "node": os.environ.get("SLURMD_NODENAME"), "started": utc_timestamp(), "resumed": resumed}
    job["starts"] = [*job.get("starts", []), start]
    path.parent.mkdir(exist_ok=True)
    write_json_atomic(path, job)
    return job


def join(run_dir: Path) -> int:
    """Another node of a multi-node job (started by node 0 through srun): run this node's ranks against
    node 0's data server; node 0 writes the record and decides the job's exit."""
    from harness.cluster.nodes import this_node_launch
    from harness.formats.run_spec import read_run_spec
    from harness.run.runner import RunInterrupted, RunRequest, join_run

    launch = this_node_launch(run_dir, os.environ.get("SLURMD_NODENAME", ""))
    spec = read_run_spec(run_dir)
    try:
        join_run(RunRequest(method_dir=Path(spec.method_dir), out=run_dir, device=spec.device, launch=launch,
                            progress=False))
    except RunInterrupted as exc:
        print(f"slowrun: {exc}", file=sys.stderr)
        return 143
    return 0


def _start_other_nodes(folder: Path, job: dict):
    """Node 0 of a multi-node job: place the nodes for this start and start the others (None on one node)."""
    from harness.cluster.nodes import describe, other_nodes_command, place_nodes
    from harness.formats.run_spec import read_run_spec
    from harness.run.runner import SERVER_FILE

    spec = read_run_spec(folder)
    if spec.launch_spec.nnodes == 1:
        return None
    launch = place_nodes(folder, spec, os.environ.get("SLURM_JOB_ID", "0"), os.environ.get("SLURMD_NODENAME", ""))
    (folder / SERVER_FILE).unlink(missing_ok=True)  # an earlier start's address: the others must wait for ours
    command = other_nodes_command(folder, launch, int((job.get("options") or {}).get("gpus_per_node", 0)))
    print(f"slowrun: node 0 at {launch.master_addr}:{launch.master_port}; starting the other "
          f"{launch.nnodes - 1} node(s): {describe(command)}", file=sys.stderr)
    return subprocess.Popen(command)


def _stop_other_nodes(others, wait_s: float = 120.0) -> None:
    """Their ranks end with node 0's (the same steps, the same server); wait for them, then stop the rest."""
    if others is None or others.poll() is not None:
        return
    try:
        others.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        others.terminate()  # srun passes it on to its tasks
        try:
            others.wait(timeout=30)
        except subprocess.TimeoutExpired:
            others.kill()
            others.wait()


def main(run_dir: str, node: bool = False) -> int:
    from harness.run.runner import RunInterrupted, resume_run, train_prepared

    folder = Path(run_dir).resolve()
    if node:
        return join(folder)
    state = run_state(folder)
    if state == "final":
        print(f"slowrun: {folder} already has its record; nothing to do", file=sys.stderr)
        return 0
    job = _note_start(folder, resumed=state == "started")
    WARNING.grace_s = float((job.get("options") or {}).get("grace_s", DEFAULT_GRACE_S))

    def on_warning(signum, frame):  # the warning outside the runner (which takes it while it runs): stop
        if not WARNING.warn():
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGUSR1, on_warning)
    others = _start_other_nodes(folder, job)
    try:
        if state == "started":
            resume_run(folder, progress=False)
        else:
            train_prepared(folder, progress=False)
    except RunInterrupted as exc:
        print(f"slowrun: {exc}", file=sys.stderr)
        job["starts"][-1]["interrupted"] = True
        warned = WARNING.signalled  # then requeue: the scheduler is about to stop this start
        if warned:
            job["starts"][-1]["warned"] = True
            job["starts"][-1]["checkpoint_on_warning"] = WARNING.result  # None: the warning came outside training
        write_json_atomic(folder / JOB_FOLDER / JOB_FILE, job)
        _stop_other_nodes(others, wait_s=30.0)  # they saw node 0's stop file: their ranks are stopping too
        job_id = os.environ.get("SLURM_JOB_ID") or job.get("job_id")
        if warned and job_id:
            done = subprocess.run(["scontrol", "requeue", str(job_id)], capture_output=True, text=True)
            print(f"slowrun: requeued job {job_id} after the scheduler's warning"
                  + ("" if done.returncode == 0 else f" (scontrol: {done.stderr.strip()})"), file=sys.stderr)
        return 143
    finally:
        _stop_other_nodes(others)
    from harness.formats.records import exit_code, load_record

    return exit_code(load_record(folder / "record.json")["status"])


if __name__ == "__main__":
    from harness.common.fast_exit import exit_now

    exit_now(main(sys.argv[1], node="--node" in sys.argv[2:]))
