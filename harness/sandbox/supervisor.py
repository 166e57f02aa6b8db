"""The harness's handle on a supervised process tree: start the supervisor, wait for it, stop it, read how
its command ended.

The supervisor itself (:mod:`harness.sandbox.supervise`) is a separate, standard-library-only process; this
module is the other side of that boundary and never runs in it.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from harness.sandbox.supervise import READY_WAIT_S

SUPERVISE_SCRIPT = Path(__file__).resolve().with_name("supervise.py")


@dataclass(frozen=True)
class SupervisedResult:
    """How a supervised command ended: exit code or signal, why it ended, how long it ran, and how many
    processes the supervisor had to kill afterwards (leftover: pids it could not kill in time)."""

    exit_code: int | None
    signal: int | None
    reason: str  # "exited", "timeout" or "terminated"
    elapsed_s: float
    killed: int
    leftover: tuple[int, ...] = ()


class Supervisor:
    """Runs a command under the supervisor process and collects its result.

    `start` returns at once. The supervisor gets SIGTERM when the thread that called `start` ends
    (PR_SET_PDEATHSIG is per thread), so call it from the thread that lives for the whole run. No signal
    handlers are installed here: a caller that wants Ctrl-C to stop the run calls `terminate`.
    """

    def __init__(
        self,
        command: list[str],
        *,
        env: dict[str, str],
        timeout_s: float | None,
        status_file: Path,
        pass_fds: tuple[int, ...] = (),
        cwd: Path | None = None,
        private_network: bool = False,
        private_pids: bool = False,
    ) -> None:
        if not command:
            raise ValueError("Supervisor needs a command")
        self.command = list(command)
        self.env = dict(env)
        self.timeout_s = timeout_s
        self.status_file = Path(status_file)
        self.pass_fds = tuple(pass_fds)
        self.cwd = cwd
        self.private_network = private_network
        self.private_pids = private_pids
        self._proc: subprocess.Popen[bytes] | None = None
        self._ready_fd: int | None = None
        self._result: SupervisedResult | None = None

    @property
    def started(self) -> bool:
        return self._proc is not None

    @property
    def pid(self) -> int:
        """The supervisor's pid (not the command's)."""
        if self._proc is None:
            raise RuntimeError("the supervisor has not been started")
        return self._proc.pid

    def start(self) -> None:
        if self._proc is not None:
            raise RuntimeError("the supervisor was already started")
        self.status_file.parent.mkdir(parents=True, exist_ok=True)
        self.status_file.unlink(missing_ok=True)  # a stale file must not pass for this run's outcome
        ready_r, ready_w = os.pipe()
        argv = [sys.executable, "-I", "-S", str(SUPERVISE_SCRIPT),
                "--timeout", repr(float(self.timeout_s or 0)), "--status-file", str(self.status_file.resolve()),
                "--parent-pid", str(os.getpid()), "--ready-fd", str(ready_w)]
        for fd in self.pass_fds:
            argv += ["--pass-fd", str(fd)]
        if self.private_network:
            argv.append("--private-network")
        if self.private_pids:
            argv.append("--private-pids")
        argv += ["--", *self.command]
        try:
            self._proc = subprocess.Popen(argv, env=self.env, cwd=self.cwd, pass_fds=(*self.pass_fds, ready_w))
        except BaseException:
            os.close(ready_r)
            raise
        finally:
            os.close(ready_w)
        self._ready_fd = ready_r

    def _await_ready(self) -> None:
        """Wait until the supervisor handles SIGTERM (or has died): a signal sent earlier would kill it
        before it could clean up."""
        if self._ready_fd is None:
            return
        try:
            ready, _, _ = select.select([self._ready_fd], [], [], READY_WAIT_S)
            if ready:
                os.read(self._ready_fd, 1)
        finally:
            os.close(self._ready_fd)
            self._ready_fd = None

    def running(self) -> bool:
        """Whether the supervised tree is still running (the supervisor has not exited)."""
        if self._proc is None:
            raise RuntimeError("the supervisor has not been started")
        return self._result is None and self._proc.poll() is None

    def wait(self) -> SupervisedResult:
        """Block until the supervisor has cleaned up; its result. Raises SandboxError when the supervisor
        itself died without a status (then processes it started may still be running)."""
        if self._proc is None:
            raise RuntimeError("the supervisor has not been started")
        if self._result is not None:
            return self._result
        returncode = self._proc.wait()
        if self._ready_fd is not None:
            os.close(self._ready_fd)
            self._ready_fd = None
        try:
            data = json.loads(self.status_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            from harness.sandbox.landlock import SandboxError

            raise SandboxError(
                f"the supervisor (pid {self._proc.pid}) ended with code {returncode} without a readable status "
                f"file {self.status_file} ({exc}); processes it started may still be running"
            ) from None
        self._result = SupervisedResult(
            exit_code=data["exit_code"],
            signal=data["signal"],
            reason=data["reason"],
            elapsed_s=float(data["elapsed_s"]),
            killed=int(data["killed"]),
            leftover=tuple(data.get("leftover", ())),
        )
        return self._result

    def terminate(self) -> SupervisedResult:
        """Stop the run: SIGTERM to the supervisor, which kills the whole tree; then its result."""
        if self._proc is None:
            raise RuntimeError("the supervisor has not been started")
        if self._proc.poll() is None:
            self._await_ready()
            try:
                self._proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        return self.wait()
