"""Requests the client would never send, written straight onto the method's channel. Each must end the
run as invalid (ProtocolViolation) without the runner reading, keeping or writing what it was sent; the
line logged before the attack stays in metrics.jsonl.

Targets: huge_frame (a 3 GB payload announced), huge_header (15 MB of header), long_line (a 100 KB log
line, under the header limit but over the log line's), nan_json (NaN as a JSON literal), string_loss
(a loss of "NaN" spelled as a string), forged_event (a snapshot event), metrics_flood (64 MiB of lines)."""

import json

from harness.wire.framing import MAGIC, PREFIX
from tests.trust.methods.common import train_and_snapshot


def raw(ctx, head: bytes, payload_len: int = 0) -> None:
    ctx._channel.sock.sendall(PREFIX.pack(MAGIC, len(head), payload_len) + head)


def main(ctx):
    ctx.log(before=1)
    ctx.snapshot_tags()  # answered: the line above is written
    target = ctx.hparams["target"]
    channel = ctx._channel
    if target == "huge_frame":
        raw(ctx, b'{"op":"log","entry":{}}', 3 << 30)
        chunk = b"\0" * (1 << 20)
        for _ in range(64):  # start sending the 3 GB; the server must not be reading it
            try:
                channel.sock.sendall(chunk)
            except OSError:
                break
    elif target == "huge_header":
        raw(ctx, json.dumps({"op": "log", "entry": {"x": "a" * 15_000_000}}).encode())
    elif target == "long_line":
        channel.send({"op": "log", "entry": {"x": ["a" * 1000] * 100}, "reply": False})
    elif target == "nan_json":
        raw(ctx, b'{"op":"log","entry":{"loss":NaN},"reply":false}')
    elif target == "string_loss":
        channel.send({"op": "log", "entry": {"loss": "NaN"}, "reply": False})
    elif target == "forged_event":
        channel.send({"op": "log", "entry": {"event": "snapshot", "tag": "best"}, "reply": False})
    elif target == "metrics_flood":
        line = {"op": "log", "entry": {f"k{i}": "x" * 1000 for i in range(60)}, "reply": False}
        for _ in range(1200):
            channel.send(line)
    ctx.snapshot_tags()  # the answer says the run is over
    train_and_snapshot(ctx)
