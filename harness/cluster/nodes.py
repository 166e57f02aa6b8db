"""Where a multi-node Slurm job's nodes are: node 0's address and port, and how the other nodes are started.

Slurm decides the nodes when the job starts, and a requeued job may start on other nodes, so the
placement is worked out at every start, not when the run is submitted: node 0 (the node the batch script
runs on, the first of the allocation) writes it into the run folder's ``run.json`` (``launch``), then starts
one task on each other node with ``srun``; each of those reads the placement back and joins node 0's data
server as ``slowrun run --node-rank K`` would (harness.run.runner.join_run). The harness's own multi-node
path stays the engine: torchrun on every node, a static rendezvous at node 0, every batch from node 0.

The address is the node's ``NodeAddr`` as Slurm knows it (the name the other nodes reach it by; it is the
node name unless the cluster says otherwise). The port is derived from the job id, so two jobs sharing a
node do not meet at one rendezvous port, and stepped past any pair that is taken there; the data server
listens on it + 1.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import sys
from pathlib import Path

from harness.cluster.slurm import SlurmError, slurm_command
from harness.common.distributed import LaunchSpec
from harness.formats.run_spec import RunSpec, read_run_spec, write_run_spec

PORT_BASE = 20000  # job ports: PORT_BASE + 2 * (job id mod PORT_SPAN), each with the data server's port + 1
PORT_SPAN = 10000


def job_port(job_id: str | int) -> int:
    """The job's rendezvous port (even; the data server takes the odd one above it)."""
    return PORT_BASE + 2 * (int(job_id) % PORT_SPAN)


def free_port_pair(first: int, tries: int = 64) -> int:
    """The first even port from `first` on, in steps of 2, that is free on this node with the one above it:
    another job on node 0 (whose id maps to the same port, or that holds it by chance) is stepped over."""
    import socket

    for port in range(first, first + 2 * tries, 2):
        if port + 1 >= 65536:
            break
        sockets = []
        try:
            for candidate in (port, port + 1):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("0.0.0.0", candidate))
            return port
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise SlurmError(f"no free pair of ports from {first} on node 0 ({tries} tried)")


def job_nodes(nodelist: str | None = None) -> list[str]:
    """The job's nodes in Slurm's order (node 0 first), from ``SLURM_JOB_NODELIST`` (``n[1-3]`` forms)."""
    nodelist = nodelist if nodelist is not None else os.environ.get("SLURM_JOB_NODELIST", "")
    if not nodelist:
        raise SlurmError("SLURM_JOB_NODELIST is not set: this runs inside a Slurm job only")
    done = subprocess.run([slurm_command("scontrol"), "show", "hostnames", nodelist], capture_output=True, text=True)
    if done.returncode != 0:
        raise SlurmError(f"scontrol show hostnames {nodelist}: {done.stderr.strip()}")
    return done.stdout.split()


def node_address(node: str) -> str:
    """How the other nodes reach `node`: its NodeAddr, else its name."""
    done = subprocess.run([slurm_command("scontrol"), "show", "node", node, "-o"], capture_output=True, text=True)
    for field in done.stdout.split() if done.returncode == 0 else ():
        if field.startswith("NodeAddr="):
            return field.split("=", 1)[1] or node
    return node


def place_nodes(run_dir: Path, spec: RunSpec, job_id: str, this_node: str) -> LaunchSpec:
    """Node 0's placement for this start, written into ``run.json`` for the other nodes to read."""
    nodes = job_nodes()
    launch = spec.launch_spec
    if len(nodes) != launch.nnodes:
        raise SlurmError(f"the run was prepared for {launch.nnodes} nodes, but the job holds {len(nodes)} "
                         f"({', '.join(nodes)}); submit it again with --nodes {launch.nnodes}")
    if this_node != nodes[0]:
        raise SlurmError(f"the job's batch script runs on {this_node}, not on its first node {nodes[0]}")
    placed = dataclasses.replace(launch, node_rank=0, master_addr=node_address(nodes[0]),
                                 master_port=free_port_pair(job_port(job_id)))
    write_run_spec(run_dir, spec.replace(launch=placed.to_dict()))
    return placed


def this_node_launch(run_dir: Path, this_node: str) -> LaunchSpec:
    """Another node's placement: node 0's, with this node's rank (its place in the job's node list)."""
    launch = read_run_spec(run_dir).launch_spec
    nodes = job_nodes()
    if this_node not in nodes:
        raise SlurmError(f"{this_node} is not one of the job's nodes ({', '.join(nodes)})")
    return dataclasses.replace(launch, node_rank=nodes.index(this_node))


def other_nodes_command(run_dir: Path, launch: LaunchSpec, gpus_per_node: int, python: str = sys.executable) -> list[str]:
    """One task on each node but node 0, each joining the run (``python -m harness.cluster.job RUN_DIR --node``)."""
    others = launch.nnodes - 1
    command = [slurm_command("srun"), f"--nodes={others}", f"--ntasks={others}", "--ntasks-per-node=1", "--relative=1",
               f"--cpus-per-task={max(1, launch.nproc_per_node)}", "--kill-on-bad-exit=0", "--label"]
    if gpus_per_node:
        command.append(f"--gpus-per-node={gpus_per_node}")
    return command + [python, "-m", "harness.cluster.job", str(Path(run_dir).resolve()), "--node"]


def describe(command: list[str]) -> str:
    return " ".join(shlex.quote(part) for part in command)
