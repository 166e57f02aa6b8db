"""Signal the processes above it (the supervisor and the runner that holds the data server)."""

import os
import signal

from tests.trust.methods.common import attempt, train_and_snapshot


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def main(ctx):
    supervisor = parent_of(os.getpid())
    runner = parent_of(supervisor)
    ctx.log(attempts={"supervisor": attempt(lambda: os.kill(supervisor, signal.SIGTERM)),
                      "runner": attempt(lambda: os.kill(runner, signal.SIGTERM))})
    train_and_snapshot(ctx)
