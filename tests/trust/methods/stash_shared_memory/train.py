"""A stash outside the run. /dev/shm is the one folder beyond scratch and the outbox that the sandbox lets a
method write: shared with the machine, another run's method could read what this one left there, and a
resumed session could find what the rolled-back one read after its checkpoint. It lists what it sees there,
leaves a file named by `target`, and trains."""

import os

from tests.trust.methods.common import train_and_snapshot


def main(ctx):
    seen = sorted(os.listdir("/dev/shm"))
    with open(os.path.join("/dev/shm", ctx.hparams["target"]), "w") as f:
        f.write("read after the checkpoint")
    ctx.log(shm_seen=",".join(seen)[:2000], shm_wrote=ctx.hparams["target"])
    train_and_snapshot(ctx)
