"""The method's own process: connect to the data server, sandbox, then run the method.

Started by the runner (through the sandbox supervisor, and torchrun when distributed) as
`python -m harness.confined.method_process`, with the path of a file holding the server's address and the run's token in
its environment (the file is in the run folder, which the sandbox closes; the token itself is never in
the environment, where /proc/self/environ would keep it for the method to read). The order
matters: this harness code first connects to the server (the one channel the method will have), then
enters the sandbox the server describes (Landlock: read-only Python and the method directory, read-write
scratch and outbox, nothing else), reports which sandbox it got, and only then imports the method. So the
method's code never runs with more than the sandbox allows, and everything it learns about the run comes
over that channel.

The status it reports at the end is only the method's side of the story (which exception ended it); the
server decides the record's status from its own state and from how the process tree ended.
"""

from __future__ import annotations

import os
import random
import socket
import sys
import traceback
from pathlib import Path


def read_connect_file(path: str) -> tuple[str, str]:
    """(address, token) from the file the runner wrote for this run's ranks."""
    import json

    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return str(data["address"]), str(data["token"])


def _error(exc: BaseException) -> dict:
    """The method's error as the server takes it: bounded strings (the end request has a size limit)."""
    return {"type": type(exc).__name__[:200], "message": str(exc)[:4000],
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-32000:]}


def connect(address: str) -> socket.socket:
    """`unix-abstract:NAME`, `unix:PATH` (this node's server) or `tcp:HOST:PORT` (node 0's, from another node)."""
    kind, _, name = address.partition(":")
    if kind == "tcp":
        host, _, port = name.rpartition(":")
        sock = socket.create_connection((host, int(port)), timeout=60)
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect("\0" + name if kind == "unix-abstract" else name)
    return sock


def run_worker() -> int:
    from harness.common.distributed import rank_from_env
    from harness.wire.framing import Channel, ChannelClosed

    from harness.sandbox.environment import CONNECT_ENV

    connect_file = os.environ.get(CONNECT_ENV)
    if not connect_file:
        print(f"harness.confined.method_process: ${CONNECT_ENV} is set by slowrun run; this module is not meant to be started by "
              "hand", file=sys.stderr)
        return 2
    info = rank_from_env()
    address, token = read_connect_file(connect_file)
    channel = Channel(connect(address))
    channel.send({"op": "hello", "token": token, "rank": info.rank, "pid": os.getpid()})
    del token  # the method runs in this frame's callee: leave it nothing to find by walking the stack
    reply, _ = channel.recv()
    if not reply.get("ok"):
        print(f"harness.confined.method_process: the data server refused this process: {reply.get('error')}", file=sys.stderr)
        return 2
    run = reply["run"]

    from harness.sandbox import SandboxPolicy, base_read_only_paths, default_devices, enter_sandbox

    box = run["sandbox"]
    policy = SandboxPolicy(read_only=tuple(base_read_only_paths()) + tuple(box["read_only"]),
                           read_write=tuple(box["read_write"]), devices=tuple(default_devices()),
                           list_only=tuple(box["list_only"]), scope_abstract_sockets=not info.is_distributed)
    sandbox = enter_sandbox(policy)
    channel.send({"op": "sandboxed", "sandbox": sandbox})
    channel.recv()

    import numpy as np
    import torch

    from harness.confined.context import ContractError, Diverged, RunContext
    from harness.common.distributed import init_process_group
    from harness.errors import BudgetExhausted, TimeExhausted
    from harness.confined.entry_import import import_entry
    from harness.common.threads import apply_thread_setting

    device = run["device"]
    if info.is_distributed:
        device = init_process_group(info, device)
    apply_thread_setting()
    seed = int(run["seed"])
    torch.manual_seed(seed)
    np.random.seed(seed % (1 << 32))
    random.seed(seed)
    ctx = RunContext(channel, run, rank_info=info, device=device)
    status, error = "ok", None
    try:
        try:
            entry = import_entry(Path(run["method_dir"]), run["entry"])
        except Exception as exc:
            raise ContractError(f"[method].entry {run['entry']!r} cannot be imported from {run['method_dir']}: "
                                f"{type(exc).__name__}: {exc} (slowrun check DIR lists every problem)") from exc
        entry(ctx)
    except TimeExhausted:  # the clock ends a timed run; the server knows whether it went past the cap
        status, error = "ok", None
    except BudgetExhausted as exc:
        status, error = "budget-exceeded", _error(exc)
    except (Diverged, FloatingPointError) as exc:
        status, error = "diverged", _error(exc)
    except ContractError as exc:
        status, error = "invalid", _error(exc)
    except Exception as exc:
        status, error = "failed", _error(exc)
    if error is not None and info.rank == 0:
        print(f"method ended with status {status}: {error['type']}: {error['message']}", file=sys.stderr)
    try:
        channel.send({"op": "end", "status": status, "error": error})
        channel.recv()
    except (OSError, ChannelClosed):
        pass
    # No job-wide barrier and no destroy_process_group here: a rank ends through the data server alone, so
    # rank groups finish independently (one that ends hours before another would otherwise be aborted by
    # the collective's timeout), and the process leaves at once (harness.common.fast_exit).
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_worker()


if __name__ == "__main__":
    from harness.common.fast_exit import exit_now

    exit_now(main())
