"""The data server: the harness side of the trust boundary during training.

The method's process holds no prepared data, no meter and no records. It asks this server for every
training batch, fitness window, snapshot, log line and checkpoint over a socket, and the server (threads
in the runner's process) meters (``meter``, ``ledger``), keeps the training clock (``clock``), stamps and
stores them (``dataserver``). See docs/threat-model.md.

Who may import it: :mod:`harness.run` (which starts it). Confined code may not; its side of the socket
is :mod:`harness.confined.context` with :mod:`harness.wire`."""

__all__ = ["DataServer", "ServerSpec", "TrainOutcome"]


def __getattr__(name):
    if name in __all__:
        from harness.server import dataserver

        return getattr(dataserver, name)
    raise AttributeError(name)
