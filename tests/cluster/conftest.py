"""A one-node Slurm cluster for the tests, from Debian's slurm-wlm and munge, started in a private folder.

It needs root (slurmd runs jobs as their users) and the daemons on PATH; where either is missing, or the
daemons do not come up, the tests that use it are skipped with the reason. `.ci/run` installs the
packages; the cluster itself is started here, per test session, on ports of its own."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SECOND_NODE = "slowrun-node2"


def _config(folder: Path) -> str:
    """Two nodes on this one machine: the machine itself and a second slurmd under another node name and
    port (multi-node jobs then really run on two Slurm nodes; both share this machine's CPUs)."""
    host = socket.gethostname().split(".")[0]
    memory = max(1024, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 - 2048)
    cpus = max(2, os.cpu_count() or 1)  # a 2-rank job fits on either node
    return "\n".join([
        "ClusterName=slowrun-test", f"SlurmctldHost={host}", "SlurmUser=root", "SlurmdUser=root",
        # a requeued job waits out the old credential's lifetime (120 s by default) before it starts again
        "AuthType=auth/munge", "AuthInfo=cred_expire=10", f"StateSaveLocation={folder}/state",
        f"SlurmdSpoolDir={folder}/spool-%n",
        f"SlurmctldPidFile={folder}/slurmctld.pid", f"SlurmdPidFile={folder}/slurmd-%n.pid",
        f"SlurmctldLogFile={folder}/slurmctld.log", f"SlurmdLogFile={folder}/slurmd-%n.log",
        f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SchedulerType=sched/backfill",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU", "ReturnToService=2", "JobRequeue=1",
        "MpiDefault=none", "KillWait=30", "MinJobAge=3600",
        f"NodeName={host} CPUs={cpus} RealMemory={memory} State=UNKNOWN",
        f"NodeName={SECOND_NODE} NodeHostname={host} NodeAddr=127.0.0.1 Port={_free_port()} CPUs={cpus} "
        f"RealMemory={memory} State=UNKNOWN",
        f"PartitionName=debug Nodes={host},{SECOND_NODE} Default=YES MaxTime=INFINITE State=UP", ""])


def _start_munge() -> None:
    if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode == 0:
        return
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_bytes(os.urandom(1024))
    shutil.chown(key, "munge", "munge")
    key.chmod(0o400)
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    subprocess.run(["runuser", "-u", "munge", "--", "munged"], check=True, capture_output=True)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    missing = [d for d in DAEMONS if shutil.which(d) is None]
    if missing:
        pytest.skip(f"Slurm is not installed ({', '.join(missing)} not on PATH; apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        pytest.skip("a test Slurm cluster needs root (slurmd starts jobs as their users)")
    folder = tmp_path_factory.mktemp("slurm")
    (folder / "state").mkdir()
    conf = folder / "slurm.conf"
    conf.write_text(_config(folder))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    try:
        _start_munge()
        subprocess.run(["slurmctld", "-c"], env=env, check=True, capture_output=True, timeout=30)
        for node in (socket.gethostname().split(".")[0], SECOND_NODE):  # both named: they share one hostname
            subprocess.run(["slurmd", "-c", "-N", node], env=env, check=True, capture_output=True, timeout=30)
    except (subprocess.SubprocessError, OSError) as exc:
        pytest.skip(f"the test Slurm cluster did not start: {exc}")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=env, capture_output=True, text=True).stdout.split()
        if len(state) == 2 and all(s in ("idle", "mixed", "allocated") for s in state):
            break
        time.sleep(0.5)
    else:
        logs = (folder / "slurmctld.log").read_text()[-2000:] if (folder / "slurmctld.log").exists() else ""
        subprocess.run(["scontrol", "shutdown"], env=env, capture_output=True)
        pytest.skip(f"the test Slurm node never became idle ({state!r}); slurmctld.log ends: {logs}")
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    try:
        yield {"conf": conf, "folder": folder}
    finally:
        subprocess.run(["scancel", "--user", "root"], env=env, capture_output=True)
        subprocess.run(["scontrol", "shutdown"], env=env, capture_output=True)
        for pid_file in [p.name for p in folder.glob("slurmd-*.pid")] + ["slurmctld.pid"]:
            try:
                os.kill(int((folder / pid_file).read_text()), 15)
            except (OSError, ValueError):
                pass
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
