"""Replaying paid steps. The old server keyed a step by `windows_served // batch_size` and rebuilt a stream
when its batch size changed: after paying step 0 of shard (0, 2), asking with batch_size =
windows_served + 1 landed on step 0 again and was served free (8 epochs on a 1-epoch budget, filed ok).

`target` picks the attempt: "shard" reads a shard in a one-process run, "batch_size" changes the batch
size of a plain stream. Neither is caught: the run must end invalid with the rule it broke."""

from tests.trust.methods.common import train_and_snapshot


def main(ctx):
    if ctx.hparams["target"] == "shard":
        stream = ctx.train_stream("main", 4, shard=(0, 2))
        while True:
            next(stream)
            stream = ctx.train_stream("main", stream.windows_served + 1, shard=(0, 2))
    stream = ctx.train_stream("main", 4)
    next(stream)
    while True:
        stream = ctx.train_stream("main", stream.windows_served + 1)
        next(stream)
    train_and_snapshot(ctx)
