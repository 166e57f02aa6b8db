"""One rank of a DDP group fails; its peer is already waiting for it in a collective (for up to the
collective's 30-minute timeout, were the harness to wait for it)."""

import torch
import torch.distributed as dist


def main(ctx):
    group = ctx.rank_groups(1)
    stream = ctx.train_stream("main", 2, shard=(group.rank_in_group, group.size))
    next(stream)
    dist.barrier(group=group.process_group)  # both batches are metered before rank 1 fails (else a race)
    if ctx.rank == 1:
        raise RuntimeError("rank 1 fails on purpose")
    dist.all_reduce(torch.ones(1), group=group.process_group)
