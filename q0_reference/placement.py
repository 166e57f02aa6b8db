"""Which ranks train which model: independent jobs (q0's trajectories, the naive ensemble's members, the
single model) on groups of ranks.

With W ranks and N independent jobs the ranks are split into g contiguous groups as even as possible
(``ctx.rank_groups(g)``: sizes differ by at most one, the larger groups first), and job j runs on group
``j mod g``; the jobs of one group run one after the other, data-parallel (DDP) over the group's ranks.

Every job trains with the same global batch wherever it runs (see :mod:`q0_reference.batching`): a group
of s ranks accumulates ``global / (micro x s)`` microbatches per rank and step, so the models, schedules
and snapshots are the same on a group of 1, 2 or 8 ranks; only the time they take differs. That is why
uneven groups are a question of time, not of results: with groups of 2, 2, 2, 1, 1 (five trajectories
on 8 GPUs) the two 1-rank groups take twice as long as the others.

g is chosen to finish soonest. In units of one job on one rank (DDP assumed to scale linearly, which
holds while the all-reduce of one step hides behind the backward pass) a group's time is the number of
its jobs over its size, and the run's time is that of its slowest group. The g with the smallest time
wins; a tie goes to more groups (less communication, snapshots of every job sooner). A g whose group
sizes do not make the batch arithmetic whole (the global batch must be a multiple of micro x group size,
for every batch size the schedule uses) is never chosen. Examples:

    5 trajectories,  8 ranks: g=1 (8)        5/8 = 0.625  <- chosen: the five run in turn on all 8 GPUs
                              g=2 (4,4)      3/4
                              g=3 (3,3,2)    2/3
                              g=5 (2,2,2,1,1) 1/1
    5 trajectories, 40 ranks: g=5 (8 each)   1/8, tied with g=1 (5/40) -> g=5, the published layout
    2 trajectories,  2 ranks: g=2 (1,1)      1, tied with g=1 (2/2)    -> one trajectory per rank

The ``rank_groups`` hyperparameter fixes g instead (capped at min(N, W)); a g whose arithmetic is not
whole is refused with the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Iterable, Sequence

import torch

from q0_reference.batching import BatchPlan
from q0_reference.errors import Q0ConfigError


def group_sizes(world_size: int, n_groups: int) -> list[int]:
    """Sizes of ``ctx.rank_groups(n_groups)``: contiguous, as even as possible, larger groups first."""
    n_groups = min(n_groups, world_size)
    base, extra = divmod(world_size, n_groups)
    return [base + (1 if g < extra else 0) for g in range(n_groups)]


def _fits(sizes: Iterable[int], global_batches: Sequence[int], micro_batch: int) -> bool:
    try:
        for size in set(sizes):
            for batch in global_batches:
                BatchPlan.resolve(batch, micro_batch, size)
    except Q0ConfigError:
        return False
    return True


def makespan(n_jobs: int, sizes: Sequence[int]) -> Fraction:
    """Time of the slowest group when job j runs on group j mod len(sizes), in one-job-on-one-rank units."""
    counts = [len(range(g, n_jobs, len(sizes))) for g in range(len(sizes))]
    return max(Fraction(count, size) for count, size in zip(counts, sizes))


def choose_group_count(n_jobs: int, world_size: int, global_batches: Sequence[int], micro_batch: int = 0,
                       requested: int = 0) -> int:
    """How many rank groups to split ``world_size`` ranks into for ``n_jobs`` independent jobs."""
    if n_jobs < 1 or world_size < 1:
        raise Q0ConfigError(f"placement needs at least one job and one rank (got {n_jobs} and {world_size})")
    limit = min(n_jobs, world_size)
    if requested:
        g = min(requested, limit)
        sizes = group_sizes(world_size, g)
        for size in sorted(set(sizes)):
            for batch in global_batches:
                BatchPlan.resolve(batch, micro_batch, size)  # raises with the arithmetic that fails
        return g
    best = None
    for g in range(1, limit + 1):
        sizes = group_sizes(world_size, g)
        if not _fits(sizes, global_batches, micro_batch):
            continue
        span = makespan(n_jobs, sizes)
        if best is None or span <= best[0]:
            best = (span, g)
    if best is None:
        batches = ", ".join(str(b) for b in sorted(set(global_batches)))
        raise Q0ConfigError(
            f"no split of {world_size} ranks into groups makes the batch arithmetic whole for global batch(es) "
            f"{batches} and micro_batch_size {micro_batch or 'auto'}: each group size must divide the global "
            f"batch into whole microbatches; use a batch_size that is a multiple of micro_batch_size x ranks")
    return best[1]


@dataclass(frozen=True)
class Placement:
    """Where this process's jobs run: rank group ``index`` of ``n_groups``, DDP inside it when it has
    several ranks. A one-process run is group 0 of 1 with no DDP."""

    index: int = 0
    n_groups: int = 1
    group: Any = None  # the context's RankGroup, in a distributed run

    @property
    def size(self) -> int:
        return 1 if self.group is None else self.group.size

    @property
    def rank_in_group(self) -> int:
        return 0 if self.group is None else self.group.rank_in_group

    @property
    def is_leader(self) -> bool:
        return self.rank_in_group == 0

    @property
    def distributed(self) -> bool:
        """True when the group has several ranks, which then step together (DDP)."""
        return self.size > 1

    @property
    def process_group(self):
        return None if self.group is None else self.group.process_group

    @property
    def leader_rank(self) -> int:
        """The global rank of the group's leader (the source of broadcasts inside the group)."""
        return 0 if self.group is None else self.group.ranks[0]

    @property
    def shard(self) -> tuple[int, int] | None:
        return (self.rank_in_group, self.size) if self.distributed else None

    @property
    def snapshot_args(self) -> dict:
        return {} if self.group is None else {"group": self.group}

    def jobs(self, n_jobs: int) -> list[int]:
        return [j for j in range(n_jobs) if j % self.n_groups == self.index]

    def batch_plan(self, global_batch: int, micro_batch: int) -> BatchPlan:
        return BatchPlan.resolve(global_batch, micro_batch, self.size)

    def wrap(self, model: torch.nn.Module, device: str, compiled: bool = False) -> torch.nn.Module:
        """DDP over the group's ranks (gradients all-reduced after the last microbatch); the model itself
        in a group of one. Gradients live in DDP's buckets (no second copy); the rotary tables are
        constants, so buffers are not re-broadcast every step. ``compiled``: the wrapper will be compiled,
        which sizes its buckets (see :func:`ddp_bucket_cap_mb`)."""
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        index = torch.device(device).index
        device_ids = [index if index is not None else torch.cuda.current_device()] if device.startswith("cuda") else None
        return DistributedDataParallel(model, process_group=self.process_group, device_ids=device_ids,
                                       gradient_as_bucket_view=True, bucket_cap_mb=ddp_bucket_cap_mb(model, compiled),
                                       **_no_buffer_sync())


def _no_buffer_sync() -> dict:
    """DDP's flag for "do not re-broadcast buffers at every forward", by whichever name this torch has: newer
    versions name it `forward_sync_buffers` and warn on `broadcast_buffers` (both still sync once, at init,
    which the rotary tables, equal on every rank, do not mind)."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    names = inspect.signature(DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in names else {"broadcast_buffers": False}


COMPILED_DDP_BUCKETS = 8
"""Gradient buckets of a compiled DDP model. Dynamo's DDP optimizer cuts the compiled graph at every
bucket boundary so each bucket's all-reduce can start while the backward goes on. A bucket closes at the
first graph node that takes it past the cap, so with DDP's default 25 MB a GPT compiles as one graph per
25 to 40 MB of gradients (20 graphs for 580 MiB, counted in tests/q0/test_ddp_compile.py): 170 to 260
separate Inductor graphs for the 1.72B preset's 6.9 GB, and a first compile far longer than a run can
afford. Eight buckets keep seven all-reduces overlapping the backward (the last one, as in any DDP step,
does not) and compile as nine graphs (DDP's small first bucket is the ninth)."""


def ddp_bucket_cap_mb(model: torch.nn.Module, compiled: bool) -> float:
    """DDP's bucket size in MB: the default 25 when the model runs eagerly (buckets cost nothing there
    but overlap), else the model's gradient bytes over :data:`COMPILED_DDP_BUCKETS`, never below 25."""
    default = 25.0
    if not compiled:
        return default
    grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return max(default, grad_bytes / COMPILED_DDP_BUCKETS / 2**20)


def place(ctx, n_jobs: int, global_batches: Sequence[int], micro_batch: int = 0, requested: int = 0) -> Placement:
    """This process's placement for ``n_jobs`` independent jobs (collective: every rank calls it alike)."""
    world = getattr(ctx, "world_size", 1)
    if world <= 1:
        for batch in global_batches:
            BatchPlan.resolve(batch, micro_batch, 1)
        return Placement()
    n_groups = choose_group_count(n_jobs, world, global_batches, micro_batch, requested)
    group = ctx.rank_groups(n_groups)
    expected = group_sizes(world, n_groups)[group.index]
    if group.size != expected:
        raise Q0ConfigError(f"ctx.rank_groups({n_groups}) gave this rank a group of {group.size} ranks where "
                            f"{expected} were expected; the placement rule assumes even contiguous groups")
    return Placement(group.index, n_groups, group)
