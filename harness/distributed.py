"""Multi-process and multi-node runs: the torchrun launch, rank information and the global budget.

A distributed run is the same run folder trained by several processes that `torch.distributed.run`
(torchrun) starts. The budget is one number for all of them: every rank charges its windows to one
counter kept in the process group's key-value store (an atomic add on rank 0's TCP store), so a window
is refused the moment the total over all ranks would pass the budget, whichever rank asks. Per-stream
counts stay with the rank that served them and are summed when the ranks finish.

Rank groups are how a method places work: `RankGroups` splits the world into contiguous groups (q0 puts
one trajectory per group), each with its own process group for DDP inside it; the group's first rank
is its leader and the one that writes the group's snapshots, so every snapshot is written once.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from harness.errors import SlowrunError

BUDGET_KEY = "slowrun/meter/targets"


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
        """`python -m torch.distributed.run ... -m MODULE ARGS`: torchrun with a static rendezvous."""
        return [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={self.nproc_per_node}",
                f"--nnodes={self.nnodes}", f"--node-rank={self.node_rank}", f"--master-addr={self.master_addr}",
                f"--master-port={self.master_port}", "-m", module, *args]

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
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return device


class StoreBudget:
    """The job-wide count of target tokens served, in the default process group's key-value store.

    `add` is atomic across ranks; a refused request is taken back at once, so the counter only ever
    exceeds the budget for the instant between a rank's add and its correction.
    """

    def __init__(self, initial_local: int = 0):
        import torch.distributed as dist
        from torch.distributed import distributed_c10d

        self._store = distributed_c10d._get_default_store()
        if initial_local:  # a resumed rank brings back what it had served
            self._store.add(BUDGET_KEY, int(initial_local))
        dist.barrier()

    def add(self, tokens: int) -> int:
        return int(self._store.add(BUDGET_KEY, int(tokens)))

    def total(self) -> int:
        return self.add(0)

    def charge_group_step(self, stream_key: str, step: int, targets: int, allowed: int) -> bool:
        """One decision for all shards of a stream at one step: the first shard to arrive charges the
        whole step (`targets`, every shard's windows) or is refused, and every shard gets that answer.

        Shards of a stream step together (DDP), so either all of them train step `step` or none does; a
        refusal on one shard only would leave the others waiting in an all-reduce for ever.
        """
        base = f"slowrun/meter/step/{stream_key}/"
        arrivals, decision = f"{base}{step}/n", f"{base}{step}/ok"
        if self._store.add(arrivals, 1) == 1:
            after = self.add(targets)
            granted = after <= allowed
            if not granted:
                self.add(-targets)
            self._store.set(decision, b"1" if granted else b"0")
            if step >= 2:  # every shard has left step - 2 behind: it took part in step - 1's all-reduce
                for old in (f"{base}{step - 2}/n", f"{base}{step - 2}/ok"):
                    self._store.delete_key(old)
        else:
            self._store.wait([decision])
        return self._store.get(decision) == b"1"


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

            handle = dist.new_group(list(ranks))  # every rank creates every group, in the same order
        if info.rank in ranks:
            mine = RankGroup(index, ranks, ranks.index(info.rank), handle)
    assert mine is not None
    return mine


def gather_objects(obj) -> list:
    """Every rank's `obj`, in rank order, on every rank (a plain process gets [obj])."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
