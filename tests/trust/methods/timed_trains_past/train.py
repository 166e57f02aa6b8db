"""After TimeExhausted, keep training on data it kept (here: sleeping), then try to save that model."""

import time

from tests.trust.methods.common_timed import train_until_the_cap


def main(ctx):
    model = train_until_the_cap(ctx)
    time.sleep(float(ctx.hparams["target"] or 8))  # past the cap and its grace
    ctx.save_snapshot(model, "late")
