"""Two rank groups that finish far apart, as q0's trajectories do: nothing job-wide may wait on a timeout."""

import time

import torch
import torch.distributed as dist

from tests.runner.tiny_model import Bigram


def main(ctx):
    group = ctx.rank_groups(2)
    stream = ctx.train_stream(f"group{group.index}", 2, shard=(group.rank_in_group, group.size))
    next(stream)
    if group.index == 1:
        deadline = time.monotonic() + float(ctx.hparams["late_s"])
        while time.monotonic() < deadline:  # the late group keeps stepping inside its own process group
            total = torch.ones(1)
            dist.all_reduce(total, group=group.process_group)
            time.sleep(0.05)
    tag = f"g{group.index}"
    if group.is_leader:
        ctx.save_snapshot(Bigram(ctx.vocab_size), tag)
    tags = [t for part in ctx.gather("finals", [tag] if group.is_leader else []) for t in part]
    if ctx.rank == 0:
        ctx.set_ensemble({t: 1.0 for t in tags})
    ctx.log(finished=time.time())
