"""Hang after a first snapshot, with a child process that hangs too (its command line carries the marker)."""

import subprocess
import time

from tests.trust.methods.common import train_and_snapshot


def main(ctx):
    train_and_snapshot(ctx, epochs=0.5, tag="before-hang")
    subprocess.Popen(["/bin/sh", "-c", f"sleep 1000; echo {ctx.hparams['target']}"])
    while True:
        time.sleep(1)
