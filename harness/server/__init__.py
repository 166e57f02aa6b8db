"""The data server: the harness side of the trust boundary during training.

The method's process holds no prepared data, no meter and no records. It asks this server for every
training batch, fitness window, snapshot, log line and checkpoint over a socket, and the server (threads
in the runner's process) meters, stamps and stores them. See docs/threat-model.md.

The package imports nothing heavy: the worker imports `harness.server.wire` before it enters the
sandbox, which must happen while the process has a single thread (numpy's and torch's thread pools
start at import).
"""

__all__ = ["DataServer", "ServerSpec", "TrainOutcome"]


def __getattr__(name):
    if name in __all__:
        from harness.server import dataserver

        return getattr(dataserver, name)
    raise AttributeError(name)
