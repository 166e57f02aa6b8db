"""Another run, taken over. A method that scanned `/proc` once found a concurrent run's server address
and token, said hello as its rank 0 first, drained its budget and ended it as `diverged`. Tokens no
longer sit anywhere a method can read, but a secret can leak; so this method is handed another run's
address and token (hparam `target`, as JSON) and tries exactly that. The other run's server must close
the connection: its process is not one of that run's. Then it trains its own run honestly."""

import json
import os

from harness.wire.framing import Channel
from harness.confined.method_process import connect
from tests.trust.methods.common import train_and_snapshot


def main(ctx):
    victim = json.loads(ctx.hparams["target"])

    def hello():
        channel = Channel(connect(victim["address"]))
        channel.send({"op": "hello", "token": victim["token"], "rank": 0, "pid": os.getpid()})
        reply, _ = channel.recv()
        return "served" if reply.get("ok") else f"refused: {reply.get('error')}"

    try:
        outcome = hello()
    except Exception as exc:  # noqa: BLE001 - how the attempt ended is the point
        outcome = type(exc).__name__
    ctx.log(take_over=outcome)
    train_and_snapshot(ctx)
