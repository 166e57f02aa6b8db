"""A second hello. The old server gave a rank that connected again a new meter, so the record forgot what
it had drawn (with a replay, 8 free epochs filed ok at 0.984). The address and token are where the worker
started: /proc/self/environ keeps a process's first environment even after os.environ drops them.

Every rank draws one batch of its own stream and they meet (ctx.gather); then rank 0 connects again as
itself while rank 1 waits. In a one-process run Landlock's abstract-socket scope refuses the connection
itself; in a distributed run the server must refuse the hello and end the run."""

import os
import time

from harness.server.wire import Channel
from harness.worker import SERVER_ENV, TOKEN_ENV, connect


def main(ctx):
    stream = ctx.train_stream(f"rank{ctx.rank}", 16)
    next(stream)
    ctx.gather("drawn", ctx.rank)
    if ctx.rank != 0:
        time.sleep(60)  # stopped by the harness long before
        return
    with open("/proc/self/environ", "rb") as f:
        env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
    address, token = env[SERVER_ENV.encode()].decode(), env[TOKEN_ENV.encode()].decode()
    second = Channel(connect(address))
    second.send({"op": "hello", "token": token, "rank": ctx.rank, "pid": os.getpid()})
    reply, _ = second.recv()
    ctx.log(second_hello="accepted" if reply.get("ok") else "refused")
    while True:  # a fresh meter would let it draw on: keep drawing until the harness stops it
        next(stream)
