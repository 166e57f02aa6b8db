"""Leave a daemon behind: it sleeps, then would rewrite the record. The supervisor must kill it with
the run. Its command line carries the hparam `target` as a marker the test looks for in /proc."""

import os
import subprocess

from tests.trust.methods.common import train_and_snapshot


def main(ctx):
    marker = ctx.hparams["target"]
    subprocess.Popen(["/bin/sh", "-c", f"sleep 30; echo {marker}"], start_new_session=True,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if os.fork() == 0:  # a double fork, in a session of its own
        os.setsid()
        if os.fork() == 0:
            os.execv("/bin/sh", ["/bin/sh", "-c", f"sleep 31; echo {marker}"])
        os._exit(0)
    train_and_snapshot(ctx)
