"""Taking over another run. A method scanning /proc found a concurrent run's worker, read its server
address and token from its environment, said hello as its rank 0, drained its budget and ended it.

It reads every process's environment it can, looks for `target` (a secret the test put in another
process's environment) and for the files that hold runs' tokens, and tries to read each such file."""

import os

from tests.trust.methods.common import train_and_snapshot


def main(ctx):
    readable, secret_seen, connect_files, commands = 0, False, set(), []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                commands.append(f.read().replace(b"\0", b" ").decode(errors="replace")[:200])
        except OSError:
            pass
        if int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read()
        except OSError:
            continue
        readable += 1
        secret_seen |= ctx.hparams["target"].encode() in environ
        for item in environ.split(b"\0"):
            if item.startswith(b"SLOWRUN_CONNECT="):
                connect_files.add(item.split(b"=", 1)[1].decode())
    opened = 0
    for path in connect_files:
        try:
            with open(path) as f:
                f.read()
            opened += 1
        except OSError:
            pass
    ctx.log(commands_seen=commands[:50], other_environs_readable=readable, secret_seen=secret_seen, connect_files_found=len(connect_files),
            connect_files_opened=opened)
    train_and_snapshot(ctx)
