"""The harness's side of the fork server: one zygote per evaluation, a forked worker per snapshot.

:class:`ForkServer` starts ``python -m harness.confined.eval_zygote`` under the sandbox supervisor (so the zygote
and every process below it die with the evaluation, when the harness dies, or at ``close()``); the
zygote imports torch once. :meth:`ForkServer.spawn` hands it one end of a fresh socket pair (SCM_RIGHTS;
the harness passes descriptors, it never accepts any) and gets back the pid of the new child's keeper,
which owns that worker's process tree (see :mod:`harness.confined.eval_zygote`). :class:`ForkedChild` stops it:
SIGTERM to the keeper through a pidfd (never a reused pid), which SIGKILLs the worker and everything it
left, writes the worker's outcome and exits; if the keeper does not, its process group is SIGKILLed.
Stopping one child leaves the zygote and every other child running.

:class:`harness.eval.remote_model.RemoteModel` uses a fork server when it is given one and falls back to a
fresh worker process when the server cannot fork (no Linux pidfds or SCM_RIGHTS, or a zygote that
failed to start: its reason is kept in ``ForkServer.broken``).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import threading
from pathlib import Path
from typing import Sequence

from harness.wire import framing
from harness.errors import SlowrunError
from harness.wire.framing import STATUS_DIR

FORK_AVAILABLE = (sys.platform.startswith("linux") and hasattr(socket, "send_fds") and hasattr(os, "pidfd_open")
                  and hasattr(signal, "pidfd_send_signal"))
SPAWN_WAIT_S = 300.0  # a spawn sent while the zygote still imports torch is answered once it is done
STOP_WAIT_S = 10.0  # the keeper spends at most 5 s killing what its worker left behind
QUIT_WAIT_S = 5.0
MAX_REASON_CHARS = 2000


class ForkServerUnavailable(SlowrunError):
    """The fork server cannot fork a worker now (or ever, on this system); start a fresh process instead."""


def _wait_exit(pidfd: int, seconds: float) -> bool:
    """Whether the process behind ``pidfd`` has ended within ``seconds`` (a pidfd reads ready at exit)."""
    ready, _, _ = select.select([pidfd], [], [], seconds)
    return bool(ready)


class ForkedChild:
    """One worker forked by the fork server, known by its keeper's pid (also its process group)."""

    def __init__(self, server: "ForkServer", pid: int, pidfd: int, scratch: Path, status: Path):
        self.server = server
        self.pid = pid
        self.scratch = scratch  # the worker's own scratch folder; the caller removes it
        self.status = status
        self._pidfd: int | None = pidfd
        self._result = None

    def terminate(self, grace_s: float = 0.0):
        """Stop the worker and everything it started; how it ended (a SupervisedResult). ``grace_s``: how
        long a worker that was told to quit may take to exit by itself (its keeper then reports "exited")."""
        from harness.sandbox.supervisor import SupervisedResult

        if self._result is not None:
            return self._result
        pidfd, self._pidfd = self._pidfd, None
        try:
            if not (grace_s > 0 and _wait_exit(pidfd, grace_s)):
                try:
                    signal.pidfd_send_signal(pidfd, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            if not _wait_exit(pidfd, STOP_WAIT_S):
                try:  # the keeper is stuck: kill its group (the worker is in it unless it left)
                    os.killpg(self.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                _wait_exit(pidfd, STOP_WAIT_S)
        finally:
            os.close(pidfd)
            self.server._released(self.pid)
        try:
            data = json.loads(self.status.read_text(encoding="utf-8"))
            self._result = SupervisedResult(exit_code=data["exit_code"], signal=data["signal"], reason=data["reason"],
                                            elapsed_s=float(data["elapsed_s"]), killed=int(data["killed"]),
                                            leftover=tuple(data.get("leftover", ())))
        except (OSError, ValueError, KeyError, TypeError):
            self._result = SupervisedResult(exit_code=None, signal=None, reason="terminated", elapsed_s=0.0, killed=0)
        self.status.unlink(missing_ok=True)
        return self._result


class ForkServer:
    """A zygote for one evaluation: ``start()`` (returns at once; the zygote imports torch meanwhile),
    ``spawn()`` per snapshot, ``close()`` at the end. Thread-safe: lanes spawn through one server. Call
    ``start`` from a thread that lives as long as the server (the supervisor is tied to it)."""

    def __init__(self, *, method_dir: Path | None = None, builder_roots: Sequence[Path] | None = None,
                 require_sandbox: bool = False):
        from harness.eval.spawn import all_builder_roots

        self.method_dir = Path(method_dir).resolve() if method_dir is not None else None
        self.builder_roots = all_builder_roots(builder_roots)  # as RemoteModel takes them
        self.require_sandbox = bool(require_sandbox)
        self.broken: str | None = None if FORK_AVAILABLE else "this system cannot pass sockets to a fork server"
        self.spawned = 0
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._supervisor = None
        self._private: Path | None = None
        self._released_pids: list[int] = []

    def matches(self, method_dir: Path | None, builder_roots: Sequence[Path] | None, require_sandbox: bool) -> bool:
        """Whether this server's workers run with these settings (its zygote's sandbox is built from them);
        ``builder_roots`` as :class:`harness.eval.remote_model.RemoteModel` takes them."""
        from harness.eval.spawn import all_builder_roots

        return (self.method_dir, self.builder_roots, self.require_sandbox) == (
            Path(method_dir).resolve() if method_dir is not None else None, all_builder_roots(builder_roots),
            bool(require_sandbox))

    @property
    def usable(self) -> bool:
        return self.broken is None

    def start(self) -> "ForkServer":
        from harness.eval.spawn import supervised_process

        if self._supervisor is not None or self.broken is not None:
            return self
        self._private = Path(tempfile.mkdtemp(prefix="slowrun-zygote-"))
        scratch = self._private / "scratch"  # the zygote writes here; each child, in its own subfolder
        (scratch / STATUS_DIR).mkdir(parents=True)
        self._supervisor, ours, theirs = supervised_process("harness.confined.eval_zygote", self._private, scratch,
                                                            self.method_dir, self.builder_roots,
                                                            self.require_sandbox)
        try:
            self._supervisor.start()
        except BaseException as exc:
            ours.close()
            self.broken = f"the fork server could not start ({exc})"
            if not isinstance(exc, Exception):
                raise
        else:
            self._sock = ours
        finally:
            theirs.close()
        return self

    def spawn(self) -> tuple[ForkedChild, socket.socket]:
        """Fork a worker: its handle and the harness's end of its channel. Raises ForkServerUnavailable."""
        from harness.sandbox import sandbox_env

        with self._lock:
            if self.broken is not None:
                raise ForkServerUnavailable(self.broken)
            if self._sock is None:
                raise ForkServerUnavailable("the fork server is not running (start() it first)")
            scratch = self._private / "scratch" / f"c{self.spawned}"
            status = self._private / "scratch" / STATUS_DIR / f"c{self.spawned}.json"
            self.spawned += 1
            scratch.mkdir()
            env = sandbox_env(scratch)
            ours, theirs = socket.socketpair()
            for end in (ours, theirs):
                framing.widen_buffers(end)
            header = {"op": "spawn", "scratch": str(scratch), "status": str(status), "env": env,
                      "release": self._released_pids}
            try:
                self._sock.settimeout(SPAWN_WAIT_S)
                try:
                    framing.send(self._sock, header, fds=(theirs.fileno(),))
                except OSError:
                    pass  # a zygote that failed to start has said why: read that
                self._released_pids = []
                reply, _ = framing.recv(self._sock, max_payload=0)
                pid = reply.get("pid")
                if reply.get("ok") is not True or not isinstance(pid, int) or pid <= 0:
                    raise ForkServerUnavailable(f"the fork server failed: {str(reply.get('error'))[:MAX_REASON_CHARS]}")
                pidfd = os.pidfd_open(pid)
            except (OSError, framing.ChannelError, ForkServerUnavailable) as exc:
                ours.close()
                shutil.rmtree(scratch, ignore_errors=True)
                self.broken = str(exc) if isinstance(exc, ForkServerUnavailable) else (
                    f"the fork server stopped answering ({exc})")
                raise ForkServerUnavailable(self.broken) from None
            finally:
                theirs.close()  # only the worker holds that end now, so its exit reads as end-of-file
            return ForkedChild(self, pid, pidfd, scratch, status), ours

    def _released(self, pid: int) -> None:
        with self._lock:
            self._released_pids.append(pid)

    def zygote_pid(self) -> int | None:
        """The zygote's pid (the supervisor's only child), or None when it is not running."""
        if self._supervisor is None:
            return None
        try:
            with open(f"/proc/{self._supervisor.pid}/task/{self._supervisor.pid}/children", encoding="ascii") as f:
                children = [int(p) for p in f.read().split()]
        except OSError:
            return None
        return children[0] if children else None

    def close(self) -> None:
        """Stop the zygote and every child still running; remove the server's folders."""
        with self._lock:
            sock, self._sock = self._sock, None
            if self.broken is None:
                self.broken = "the fork server was closed"
        if sock is not None:
            try:
                sock.settimeout(QUIT_WAIT_S)
                framing.send(sock, {"op": "quit"})
            except OSError:
                pass
            sock.close()
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            try:
                supervisor.terminate()
            except SlowrunError:
                pass
        if self._private is not None:
            shutil.rmtree(self._private, ignore_errors=True)
            self._private = None

    def __enter__(self) -> "ForkServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self):  # a forgotten server must not outlive the evaluation
        if getattr(self, "_supervisor", None) is not None:
            try:
                self.close()
            except Exception:  # noqa: BLE001 - interpreter shutdown
                pass


__all__ = ["FORK_AVAILABLE", "ForkServer", "ForkServerUnavailable", "ForkedChild"]
