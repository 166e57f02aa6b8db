"""A DDP group in lockstep, with one rank late before every step: the accounting under real skew.

Every rank counts the target tokens it received and hashes them; after the refusal it logs the counts and
how many microbatches it drew, so the test can compare what the ranks saw with what the record says.
"""

import hashlib
import random
import time

import torch
import torch.distributed as dist

from harness.contract import BudgetExhausted
from tests.runner.tiny_model import Bigram


def main(ctx):
    accumulation = int(ctx.hparams["accumulation"])
    skew = float(ctx.hparams["skew_ms"]) / 1000.0
    group = ctx.rank_groups(1)
    if group.is_leader:  # the final snapshot's export is done before the clock starts, not in a time cap's grace
        ctx.prepare_snapshot(Bigram(ctx.vocab_size))
    dist.barrier(group=group.process_group)  # and no rank starts the clock while the leader exports
    stream = ctx.train_stream("main", int(ctx.hparams["micro_batch"]), shard=(group.rank_in_group, group.size))
    rng = random.Random(ctx.seed)  # the same draws on every rank: they agree on who is late
    received = microbatches = steps = 0
    digest = hashlib.sha256()
    refusal = None
    while refusal is None:
        late = rng.randrange(ctx.world_size)
        if skew and ctx.rank == late:
            time.sleep(skew)
        for _ in range(accumulation):
            try:
                inputs, targets = next(stream)
            except BudgetExhausted as exc:  # TimeExhausted too
                refusal = type(exc).__name__
                break
            received += targets.numel()
            microbatches += 1
            digest.update(targets.numpy().tobytes())
        if refusal is None:
            total = torch.ones(1)
            dist.all_reduce(total, group=group.process_group)  # the optimizer step's gradient all-reduce
            steps += 1
    ctx.log(received=received, microbatches=microbatches, steps=steps, refusal=refusal,
            digest=digest.hexdigest())
    if group.is_leader:
        ctx.save_snapshot(Bigram(ctx.vocab_size), "final")
