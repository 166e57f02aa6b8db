"""Secrets and the run's token. The method's environment used to be the runner's whole environment
(`HF_TOKEN` and `AWS_SECRET_ACCESS_KEY` reached a listener), and the data server's address and token sat
in it too: with them a rank could say hello again, or another run's rank could take this run over.

It looks everywhere a method can look without leaving its sandbox: os.environ, /proc/self/environ (its
first environment, whatever was deleted since), the file the runner names for the worker, the frames
above it and every object the garbage collector knows. It reports what it found, then trains."""

import gc
import os
import re
import sys

from tests.trust.methods.common import attempt, train_and_snapshot

TOKEN = re.compile(r"\b[0-9a-f]{48}\b")


def main(ctx):
    found = {}
    with open("/proc/self/environ", "rb") as f:
        first = f.read().decode(errors="replace")
    found["environ_names"] = sorted(set(os.environ) | {item.split("=", 1)[0] for item in first.split("\0") if item})
    found["token_in_environ"] = bool(TOKEN.search(first)) or any(TOKEN.search(v) for v in os.environ.values())
    connect = os.environ.get("SLOWRUN_CONNECT", "")
    found["connect_file"] = attempt(lambda: open(connect).read()) if connect else "no path"
    frames, frame = [], sys._getframe()
    while frame is not None:
        frames.extend(str(v) for v in frame.f_locals.values() if isinstance(v, (str, bytes, dict)))
        frame = frame.f_back
    found["token_on_stack"] = any(TOKEN.search(v) for v in frames)
    found["token_on_heap"] = any(isinstance(o, str) and len(o) == 48 and TOKEN.fullmatch(o) for o in gc.get_objects())
    ctx.log(**{k: (v if not isinstance(v, list) else ",".join(v)) for k, v in found.items()})
    train_and_snapshot(ctx)
