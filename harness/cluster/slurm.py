"""Slurm: the job script, submission, status and cancellation of a run folder's job.

A generated ``sbatch`` script, not submitit. Submitit pickles a Python callable and its arguments and
re-runs them on the node, which ties the job to the submitting interpreter's exact environment and hides
what runs; a Slowrun job is one command on a run folder, so a plain script (kept in the run folder as
``slurm/job.sbatch``, readable and editable) says everything, needs no extra dependency and requeues with
Slurm's own ``--requeue``. The script asks for the warning signal (``--signal=B:USR1@GRACE``): on it the job
stops the method's processes, records the interruption and requeues itself (harness.cluster.job).

The job runs each node's processes through torchrun (``--nproc-per-node``). With ``--nodes N`` the batch
script runs node 0 (the data server, the meter, the record) and node 0 starts the other nodes' parts with
``srun`` at every start (harness.cluster.nodes), since a requeued job may land on other nodes."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.common.atomic import write_json_atomic, write_text_atomic
from harness.errors import SlowrunError
from harness.run.preemption import DEFAULT_GRACE_S

JOB_FOLDER = "slurm"
JOB_SCRIPT = "job.sbatch"
JOB_FILE = "job.json"  # the submitted job's id, and every start of it (harness.cluster.job appends)


class SlurmError(SlowrunError):
    """Slurm refused a request, or is not there."""


@dataclass(frozen=True)
class SlurmOptions:
    partition: str | None = None
    nodes: int = 1
    gpus_per_node: int = 0
    time: str | None = None  # Slurm's format: "HH:MM:SS", "D-HH:MM", minutes
    account: str | None = None
    grace_s: int = DEFAULT_GRACE_S  # the warning before the end of the time limit or a pre-emption

    def __post_init__(self):
        if isinstance(self.nodes, bool) or not isinstance(self.nodes, int) or self.nodes < 1:
            raise SlurmError(f"--nodes must be a whole number of nodes, at least 1 (got {self.nodes!r})")
        if self.gpus_per_node < 0 or self.grace_s < 1:
            raise SlurmError("--gpus-per-node must be >= 0 and the grace at least one second")


def slurm_command(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SlurmError(f"{name} is not on PATH: run this on a machine with the Slurm client commands")
    return path


def job_script(run_dir: Path, options: SlurmOptions, nproc_per_node: int, python: str = sys.executable,
               pythonpath: str | None = None) -> str:
    """The sbatch script of ``run_dir``'s job."""
    run_dir = Path(run_dir).resolve()
    folder = run_dir / JOB_FOLDER
    lines = ["#!/bin/bash", f"#SBATCH --job-name=slowrun-{run_dir.name[:60]}",
             f"#SBATCH --output={folder}/slurm-%j.out", "#SBATCH --open-mode=append",
             f"#SBATCH --nodes={options.nodes}", "#SBATCH --ntasks-per-node=1",
             f"#SBATCH --cpus-per-task={max(1, nproc_per_node)}",
             "#SBATCH --requeue", f"#SBATCH --signal=B:USR1@{options.grace_s}"]
    if options.gpus_per_node:
        lines.append(f"#SBATCH --gpus-per-node={options.gpus_per_node}")
    for flag, value in (("partition", options.partition), ("time", options.time), ("account", options.account)):
        if value:
            lines.append(f"#SBATCH --{flag}={value}")
    lines += ["", "# Trains the run, or resumes it if it was started before (a requeue); see harness/cluster/job.py."]
    if pythonpath:
        lines.append(f"export PYTHONPATH={shlex.quote(pythonpath)}${{PYTHONPATH:+:$PYTHONPATH}}")
    lines.append(f"exec {shlex.quote(python)} -m harness.cluster.job {shlex.quote(str(run_dir))}")
    return "\n".join(lines) + "\n"


def submit(run_dir: Path, options: SlurmOptions, nproc_per_node: int, pythonpath: str | None = None) -> str:
    """Write the job script into the run folder and submit it; the job id."""
    run_dir = Path(run_dir).resolve()
    folder = run_dir / JOB_FOLDER
    folder.mkdir(exist_ok=True)
    script = write_text_atomic(folder / JOB_SCRIPT, job_script(run_dir, options, nproc_per_node, pythonpath=pythonpath))
    done = subprocess.run([slurm_command("sbatch"), "--parsable", str(script)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SlurmError(f"sbatch refused the job: {done.stderr.strip() or done.stdout.strip()}")
    job_id = done.stdout.strip().split(";")[0]
    write_json_atomic(folder / JOB_FILE, {"job_id": job_id, "options": asdict(options), "starts": []})
    return job_id


def read_job(run_dir: Path) -> dict:
    path = Path(run_dir) / JOB_FOLDER / JOB_FILE
    if not path.exists():
        raise SlurmError(f"{run_dir}: no {JOB_FOLDER}/{JOB_FILE}; this run was not submitted with --slurm")
    return json.loads(path.read_text(encoding="utf-8"))


def job_state(job_id: str) -> str:
    """The job's state as Slurm tells it (PENDING, RUNNING, COMPLETED, ...), from squeue while it is known
    there, else from sacct; UNKNOWN when neither knows it (accounting disabled and the job long gone)."""
    done = subprocess.run([slurm_command("squeue"), "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    state = done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else ""
    if state:
        return state
    sacct = shutil.which("sacct")
    if sacct:
        done = subprocess.run([sacct, "-n", "-X", "-P", "-j", job_id, "-o", "State"], capture_output=True, text=True)
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip().splitlines()[0].split()[0]
    return "UNKNOWN"


def status(run_dir: Path) -> dict:
    """What ``slowrun status`` prints: the job, its starts, and the run's record when it has one."""
    job = read_job(run_dir)
    record_path = Path(run_dir) / "record.json"
    record = json.loads(record_path.read_text(encoding="utf-8")) if record_path.exists() else None
    starts = job.get("starts", [])
    return {"job_id": job["job_id"], "state": job_state(job["job_id"]), "nodes": (job.get("options") or {}).get("nodes", 1),
            "starts": len(starts), "preemptions": sum(1 for s in starts if s.get("resumed")),
            "warnings": sum(1 for s in starts if s.get("warned")),
            "checkpointed_on_warning": sum(1 for s in starts if (s.get("checkpoint_on_warning") or {}).get("settled")),
            "record_status": None if record is None else record.get("status")}


def cancel(run_dir: Path) -> str:
    job = read_job(run_dir)
    done = subprocess.run([slurm_command("scancel"), job["job_id"]], capture_output=True, text=True)
    if done.returncode != 0:
        raise SlurmError(f"scancel refused: {done.stderr.strip()}")
    return job["job_id"]
