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
        # The late group keeps stepping inside its own process group. Its ranks start their clocks apart,
        # so they agree each step on whether to go on (the minimum of their votes): a rank that stopped
        # on its own clock would leave its peer alone in the next all-reduce.
        deadline = time.monotonic() + float(ctx.hparams["late_s"])
        while True:
            go_on = torch.tensor([1.0 if time.monotonic() < deadline else 0.0])
            dist.all_reduce(go_on, op=dist.ReduceOp.MIN, group=group.process_group)
            if go_on.item() == 0.0:
                break
            time.sleep(0.05)
        if ctx.hparams["stray"] and group.is_leader:  # one all-reduce its peer never joins
            dist.all_reduce(torch.ones(1), group=group.process_group)
    tag = f"g{group.index}"
    if group.is_leader:
        ctx.save_snapshot(Bigram(ctx.vocab_size), tag)
    tags = [t for part in ctx.gather("finals", [tag] if group.is_leader else []) for t in part]
    if ctx.rank == 0:
        ctx.set_ensemble({t: 1.0 for t in tags})
    ctx.log(finished=time.time())
