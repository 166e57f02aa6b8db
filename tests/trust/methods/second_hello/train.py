"""A second hello. The old server gave a rank that connected again a new meter, so the record forgot what
it had drawn (with a replay, 8 free epochs filed ok at 0.984). The address and token are where the worker
started: /proc/self/environ keeps a process's first environment even after os.environ drops them."""

import os

from harness.server.wire import Channel
from harness.worker import SERVER_ENV, TOKEN_ENV, connect
from tests.trust.methods.common import train_and_snapshot


def main(ctx):
    stream = ctx.train_stream("main", 16)
    next(stream)
    with open("/proc/self/environ", "rb") as f:
        env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
    address, token = env[SERVER_ENV.encode()].decode(), env[TOKEN_ENV.encode()].decode()
    second = Channel(connect(address))
    second.send({"op": "hello", "token": token, "rank": ctx.rank, "pid": os.getpid()})
    reply, _ = second.recv()
    ctx.log(second_hello="accepted" if reply.get("ok") else "refused")
    train_and_snapshot(ctx)
