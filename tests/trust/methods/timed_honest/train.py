"""Warm up (untimed) on the harness's dummy batches, train until the cap, save the model as it stood."""

import time

from tests.trust.methods.common_timed import train_until_the_cap


def main(ctx):
    for inputs, targets in ctx.warmup_batches(3, batch_size=4):
        assert inputs.shape == (4, ctx.seq_len) and targets.shape == (4, ctx.seq_len)
    time.sleep(1.5)  # a slow compile: before the first real batch, so not training time
    model = train_until_the_cap(ctx)
    ctx.save_snapshot(model, "final")
