"""Signal the processes above it (the supervisor and the runner that holds the data server).

In its own PID namespace the method sees only the namespace's init above it (the harness's processes are
not listed at all); the init is outside its Landlock domain, so even that signal is refused."""

import os
import signal

from tests.trust.methods.common import attempt, train_and_snapshot


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def main(ctx):
    above, pid = [], os.getpid()
    while len(above) < 2 and (pid := parent_of(pid)) > 0:
        above.append(pid)
    tried = {}
    for name, index in (("parent", 0), ("above_parent", 1)):
        if index < len(above):
            target = above[index]
            tried[name] = attempt(lambda: os.kill(target, signal.SIGTERM))
        else:
            tried[name] = "invisible"
    ctx.log(attempts=tried)
    train_and_snapshot(ctx)
