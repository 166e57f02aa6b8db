"""A second hello. The old server gave a rank that connected again a new meter, so the record forgot what
it had drawn (with a replay, 8 free epochs filed ok at 0.984). The token is no longer anywhere the method
can read, so it tries what it has: a hello on its own channel, and a new connection to the address its
channel is connected to, with the best token it can make up. Both must be refused; then it trains."""

import os

from harness.wire.framing import Channel
from harness.confined.method_process import connect
from tests.trust.methods.common import train_and_snapshot


def main(ctx):
    next(ctx.train_stream(f"first-r{ctx.rank}", 16))
    ctx._channel.send({"op": "hello", "token": "0" * 48, "rank": ctx.rank, "pid": os.getpid()})
    again, _ = ctx._channel.recv()
    address = ctx._channel.sock.getpeername()
    fresh = Channel(connect(f"unix:{address}"))
    fresh.send({"op": "hello", "token": "0" * 48, "rank": ctx.rank, "pid": os.getpid()})
    other, _ = fresh.recv()
    ctx.log(same_channel="accepted" if again.get("ok") else "refused",
            new_connection="accepted" if other.get("ok") else "refused")
    train_and_snapshot(ctx)
