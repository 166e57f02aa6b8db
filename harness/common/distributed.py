"""Multi-process and multi-node runs: the torchrun launch, rank information and rank groups.

A distributed run is the same run folder trained by several processes that `torch.distributed.run`
(torchrun) starts. The budget and the clock are not here: they are the job's ledger in the data server
(`harness.server.ledger`), which every rank asks for every batch. Nothing in the harness runs a job-wide
collective: a rank ends by telling the data server, so rank groups finish independently and no group
waits on another in a collective whose timeout would abort it.

On one node torchrun runs standalone (a rendezvous on a free port), so two runs on one machine never
collide on a port; a multi-node job's nodes meet at `--master-addr:--master-port`.

Rank groups are how a method places work: `RankGroups` splits the world into contiguous groups (q0 puts
one trajectory per group), each with its own process group for DDP inside it; the group's first rank
is its leader and the one that writes the group's snapshots, so every snapshot is written once.
"""

from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass

from harness.errors import SlowrunError

COLLECTIVE_TIMEOUT_ENV = "SLOWRUN_COLLECTIVE_TIMEOUT_S"  # the process groups' timeout (tests shorten it)


class DistributedError(SlowrunError):
    """A distributed launch or setup problem."""


@dataclass(frozen=True)
class LaunchSpec:
    """Where this node's processes sit in a torchrun job (the flags of `slowrun run --nproc-per-node`)."""

    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29512

    def __post_init__(self):
        problems = []
        if self.nproc_per_node < 1:
            problems.append(f"--nproc-per-node must be at least 1 (got {self.nproc_per_node})")
        if self.nnodes < 1:
            problems.append(f"--nnodes must be at least 1 (got {self.nnodes})")
        if not 0 <= self.node_rank < max(self.nnodes, 1):
            problems.append(f"--node-rank must be in [0, {self.nnodes}) (got {self.node_rank})")
        if not 0 < self.master_port < 65536:
            problems.append(f"--master-port must be a TCP port (got {self.master_port})")
        if problems:
            raise DistributedError("; ".join(problems))

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def torchrun_command(self, module: str, args: list[str]) -> list[str]:
        """`python -m torch.distributed.run ... -m MODULE ARGS`: standalone on one node (torchrun picks a
        free port), a static rendezvous at the master's address and port across nodes."""
        if self.nnodes == 1:
            placement = ["--standalone", "--nnodes=1"]
        else:
            placement = [f"--nnodes={self.nnodes}", f"--node-rank={self.node_rank}",
                         f"--master-addr={self.master_addr}", f"--master-port={self.master_port}"]
        return [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={self.nproc_per_node}",
                *placement, "-m", module, *args]

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class RankInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def rank_from_env() -> RankInfo:
    """What torchrun tells each process through its environment (a plain process is rank 0 of 1)."""
    try:
        return RankInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                        int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError as exc:
        raise DistributedError(f"unreadable torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK): {exc}") from None


def init_process_group(info: RankInfo, device: str) -> str:
    """Join the job's default process group; returns the device this rank trains on."""
    import torch
    import torch.distributed as dist

    if device.startswith("cuda"):
        torch.cuda.set_device(info.local_rank)
        device = f"cuda:{info.local_rank}"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo",
                                timeout=collective_timeout())
    return device


def collective_timeout() -> datetime.timedelta | None:
    """The timeout of every process group the harness creates, the default group and each rank group alike.

    Torch gives a `new_group` without a timeout the backend's default (30 minutes for gloo), not the default
    group's: a rank left in a rank group's collective by its peer would wait half an hour whatever the job
    set. None keeps torch's defaults."""
    value = os.environ.get(COLLECTIVE_TIMEOUT_ENV)
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise DistributedError(f"{COLLECTIVE_TIMEOUT_ENV}={value!r} is not a number of seconds") from None
    if not 0 < seconds < 7 * 86400:  # nan and inf fail here too (a timedelta cannot hold inf)
        raise DistributedError(f"{COLLECTIVE_TIMEOUT_ENV}={value!r} must be a number of seconds above 0 "
                               "and below a week")
    return datetime.timedelta(seconds=seconds)


@dataclass(frozen=True)
class RankGroup:
    """One group of ranks: its index, its ranks, this rank's place in it, and its process group."""

    index: int
    ranks: tuple[int, ...]
    rank_in_group: int
    process_group: object | None

    @property
    def size(self) -> int:
        return len(self.ranks)

    @property
    def is_leader(self) -> bool:
        return self.rank_in_group == 0


def split_ranks(world_size: int, n_groups: int) -> list[tuple[int, ...]]:
    """Contiguous groups as even as possible: 5 ranks into 2 groups are (0, 1, 2) and (3, 4)."""
    if n_groups < 1:
        raise DistributedError(f"a run needs at least one rank group (asked for {n_groups})")
    n_groups = min(n_groups, world_size)
    base, extra = divmod(world_size, n_groups)
    groups, start = [], 0
    for g in range(n_groups):
        size = base + (1 if g < extra else 0)
        groups.append(tuple(range(start, start + size)))
        start += size
    return groups


def make_rank_groups(info: RankInfo, n_groups: int) -> RankGroup:
    """This rank's group when the world is split into `n_groups` (collective: every rank must call it)."""
    groups = split_ranks(info.world_size, n_groups)
    mine = None
    for index, ranks in enumerate(groups):
        handle = None
        if info.is_distributed:
            import torch.distributed as dist

            # every rank creates every group, in the same order, with the default group's timeout
            handle = dist.new_group(list(ranks), timeout=collective_timeout())
        if info.rank in ranks:
            mine = RankGroup(index, ranks, ranks.index(info.rank), handle)
    assert mine is not None
    return mine
