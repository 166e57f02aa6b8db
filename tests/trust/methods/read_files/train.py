"""Read the file named by hparam `target` (the test names the validation split, run.json, ...), then train
on whatever it got. The sandbox must stop the read: the run ends failed with PermissionError."""


def main(ctx):
    with open(ctx.hparams["target"], "rb") as f:
        f.read(1 << 20)
    from tests.trust.methods.common import train_and_snapshot

    train_and_snapshot(ctx)
