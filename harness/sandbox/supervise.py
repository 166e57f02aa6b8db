"""A supervisor that owns the untrusted process tree, so nothing the method starts outlives its run.

    python -m harness.sandbox.supervise --timeout SECONDS --status-file PATH [--pass-fd N ...] -- COMMAND...

Killing the method's process is not enough: its forked children, DataLoader workers, or a daemon it
detached with setsid and a double fork would keep running (and keep the GPU) after the run. The
supervisor makes itself a child subreaper, so every orphaned descendant is reparented to it instead of
to init, runs COMMAND in a new session, and when COMMAND exits, the timeout passes or it is told to stop
(SIGTERM, SIGINT, SIGHUP, or its parent dying), SIGKILLs the command's process group and then every
process whose parent chain still reaches it, until none is left. The outcome goes to a JSON status file,
written atomically, and the exit code: the command's, 124 on timeout, 143 when terminated.

This module is the supervisor's process. It imports only the standard library and nothing heavy, and
:class:`harness.sandbox.supervisor.Supervisor` (the handle the harness holds) runs it by file path in
isolated mode, so the supervisor starts in a few tens of milliseconds. Its tree mechanics (`Reaper`,
`kill_tree`, `watch_stop_signals`, `wait_for_child`, `write_status`) are also what the evaluation zygote's
keeper runs for its worker.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNS = 0x00020000
MS_REC, MS_PRIVATE = 0x4000, 1 << 18
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
SHARED_MEMORY = b"/dev/shm"
ISOLATION_ENV = "SLOWRUN_ISOLATION"  # what the supervisor gave the command: e.g. "network=private,pids=private"
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1

EXIT_TIMEOUT = 124
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143
EXIT_NOT_STARTED = 127
KILL_WAIT_S = 5.0  # how long to keep killing descendants before reporting the rest as leftovers
READY_WAIT_S = 30.0

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _prctl(option: int, value: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return False
    zero = ctypes.c_ulong(0)
    return libc.prctl(ctypes.c_int(option), ctypes.c_ulong(value), zero, zero, zero) == 0


# --- a private network ------------------------------------------------------------------------------------


def private_network() -> str | None:
    """Move this process (and so everything it starts) into a network namespace of its own, where the only
    interface is loopback, brought up: the ranks of one run reach each other and nothing else (their data
    server is a socket file, and sockets already open keep working). None on success, else why not.

    As root this is one unshare; otherwise a user namespace mapping only this user makes it possible on
    kernels that allow unprivileged user namespaces."""
    import fcntl
    import socket
    import struct

    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError as exc:
        return f"the C library cannot be loaded ({exc})"
    if libc.unshare(ctypes.c_int(CLONE_NEWNET)) != 0:
        first = os.strerror(ctypes.get_errno())
        uid, gid = os.getuid(), os.getgid()
        if libc.unshare(ctypes.c_int(CLONE_NEWUSER | CLONE_NEWNET)) != 0:
            return (f"unshare(CLONE_NEWNET) failed ({first}), and with a user namespace too "
                    f"({os.strerror(ctypes.get_errno())})")
        try:
            for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
                with open(f"/proc/self/{name}", "w", encoding="ascii") as f:
                    f.write(text)
        except OSError as exc:
            return f"cannot map this user into its user namespace ({exc})"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            request = struct.pack("16sH22x", b"lo", 0)
            flags = struct.unpack("16sH22x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
            fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))
    except OSError as exc:
        return f"the private network's loopback cannot be brought up ({exc})"
    return None


def private_pids() -> str | None:
    """Make the next process this one starts the first of a PID namespace of its own (it then gets its own
    /proc, see `_own_proc`): the method sees its own processes, not the harness's or other runs'. None on
    success, else why not. After `private_network` as a non-root user, the user namespace made there
    grants what this needs."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError as exc:
        return f"the C library cannot be loaded ({exc})"
    if libc.unshare(ctypes.c_int(CLONE_NEWPID)) != 0:
        return f"unshare(CLONE_NEWPID) failed ({os.strerror(ctypes.get_errno())})"
    return None


def _own_proc() -> None:
    """In the child, before it executes the command: a mount namespace of its own in which /proc shows
    its PID namespace, and /dev/shm is an empty tmpfs of its own.

    /dev/shm is the one folder outside the run that the sandbox lets the method write (torch's DataLoader
    workers and NCCL pass tensors through it). Shared with the machine, it would be a place another run's
    method could read, and one that outlives the session: a resumed run could find there what it read
    after its last checkpoint, which the resume rolled back. Its own tmpfs is shared by every process of
    the command (all local ranks), and is gone when the last of them exits. Raises OSError when a mount is
    refused (the supervisor then reports it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    shm_flags = ctypes.c_ulong(MS_NOSUID | MS_NODEV)
    for call in (lambda: libc.unshare(ctypes.c_int(CLONE_NEWNS)),
                 lambda: libc.mount(None, b"/", None, ctypes.c_ulong(MS_REC | MS_PRIVATE), None),
                 lambda: libc.mount(b"proc", b"/proc", b"proc", ctypes.c_ulong(MS_NOSUID | MS_NODEV | MS_NOEXEC), None),
                 lambda: (libc.mount(b"tmpfs", SHARED_MEMORY, b"tmpfs", shm_flags, b"mode=1777")
                          if os.path.isdir(SHARED_MEMORY) else 0)):
        if call() != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))


# The first process of a PID namespace is its init: the kernel ignores signals it has no handler for (a
# method could not even kill itself), and orphans are given to it to reap. So the command does not run as
# that process: this small init does, starts the command as its child, passes the stop signals on, reaps
# every orphan, and exits as the command did.
_INIT = r"""
import os, signal, sys
child = os.fork()
if child == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(signum, lambda signum, frame: os.kill(child, signum))
while True:
    try:
        pid, status = os.wait()
    except ChildProcessError:
        sys.exit(1)
    except InterruptedError:
        continue
    if pid == child:
        sys.exit(128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))
"""


def init_command(command: list[str]) -> list[str]:
    """`command` behind the namespace's small init (see _INIT)."""
    return [sys.executable, "-I", "-S", "-c", _INIT, *command]


# --- the process table ----------------------------------------------------------------------------------


def _process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state letter) for every process in /proc."""
    table: dict[int, tuple[int, str]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return table
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
            # The command name in parentheses may contain spaces or parentheses: split after the last ')'.
            fields = data[data.rindex(b")") + 2:].split()
            table[int(name)] = (int(fields[1]), fields[0].decode("ascii", "replace"))
        except (OSError, ValueError, IndexError):
            continue  # the process ended while we looked
    return table


def descendants(root: int) -> dict[int, str]:
    """Every process whose parent chain reaches `root` (not root itself), with its state letter."""
    children: dict[int, list[int]] = {}
    table = _process_table()
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: dict[int, str] = {}
    stack = list(children.get(root, ()))
    while stack:
        pid = stack.pop()
        if pid in found or pid == root:
            continue
        found[pid] = table[pid][1]
        stack.extend(children.get(pid, ()))
    return found


class Reaper:
    """Reaps every child that ended (orphans reparent to us), remembering the command's own wait status."""

    def __init__(self) -> None:
        self.child_pid: int | None = None
        self.child_status: int | None = None

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            if pid == self.child_pid:
                self.child_status = status


def kill_tree(root: int, child_pgid: int | None, reaper: Reaper, wait_s: float = KILL_WAIT_S) -> tuple[int, list[int]]:
    """SIGKILL the command's group, then every live descendant, reaping as they die, until none is left or
    `wait_s` passes. Returns how many processes were killed and the pids still alive at the end."""
    killed: set[int] = set()
    deadline = time.monotonic() + wait_s
    first = True
    while True:
        reaper.reap()
        found = descendants(root)
        live = [pid for pid, state in found.items() if state not in ("Z", "X")]
        if first and child_pgid is not None:
            try:
                os.killpg(child_pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        first = False
        if not found:
            return len(killed), []
        for pid in live:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except (ProcessLookupError, PermissionError):
                pass
        if time.monotonic() >= deadline:
            reaper.reap()
            return len(killed), sorted(pid for pid, state in descendants(root).items() if state not in ("Z", "X"))
        time.sleep(0.005)


# --- the supervisor process -----------------------------------------------------------------------------


def write_status(path: Path, status: dict[str, object]) -> None:
    """Write the status JSON atomically: a reader sees the whole file or none."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(status, f)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m harness.sandbox.supervise",
        description="Run COMMAND and kill every process it leaves behind when it exits, times out or is stopped.",
    )
    parser.add_argument("--timeout", type=float, default=0.0, help="seconds before the command is killed; 0 = none")
    parser.add_argument("--status-file", type=Path, required=True, help="where to write the outcome as JSON")
    parser.add_argument("--pass-fd", type=int, action="append", default=[], help="a file descriptor to inherit")
    parser.add_argument("--parent-pid", type=int, default=0, help="stop at once if our parent is no longer this pid")
    parser.add_argument("--ready-fd", type=int, default=None, help="write one byte here once signals are handled")
    parser.add_argument("--kill-wait", type=float, default=KILL_WAIT_S, help="seconds to keep killing leftovers")
    parser.add_argument("--private-network", action="store_true",
                        help="run COMMAND in a network namespace of its own with only loopback")
    parser.add_argument("--private-pids", action="store_true",
                        help="run COMMAND as the first process of a PID namespace of its own, with its own /proc")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    args = parser.parse_args(argv)
    if args.command and args.command[0] == "--":
        args.command = args.command[1:]
    if not args.command:
        parser.error("no command given after --")
    if args.timeout < 0:
        parser.error("--timeout must be 0 (none) or positive")
    return args


def watch_stop_signals() -> tuple[list[int], int, int]:
    """Collect the stop signals into a list, and make every signal (SIGCHLD included) wake a select()
    on the returned pipe: (stop signals received, pipe read end, pipe write end)."""
    stop: list[int] = []
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    for signum in STOP_SIGNALS:
        signal.signal(signum, lambda signum, frame: stop.append(signum))
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # only to wake the loop through the pipe
    return stop, wake_r, wake_w


def wait_for_child(reaper: Reaper, stop: list[int], wake_r: int, deadline: float | None = None) -> str:
    """Wait, reaping, until the child ends ("exited"), a stop signal arrives ("terminated") or the deadline
    passes ("timeout"). Every signal wakes the wait through `wake_r` (see watch_stop_signals). The
    supervisor waits for its command so, and the evaluation zygote's keeper for its worker."""
    while True:
        reaper.reap()
        if reaper.child_status is not None:
            return "exited"
        if stop:
            return "terminated"
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return "timeout"
        try:
            select.select([wake_r], [], [], 1.0 if deadline is None else min(1.0, deadline - now))
            while os.read(wake_r, 512):
                pass
        except (BlockingIOError, InterruptedError):
            pass


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    stop, wake_r, wake_w = watch_stop_signals()
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if args.parent_pid and os.getppid() != args.parent_pid:
        stop.append(signal.SIGTERM)  # the parent died before PDEATHSIG was set: it will never come
    if args.ready_fd is not None:
        try:
            os.write(args.ready_fd, b"1")
            os.close(args.ready_fd)
        except OSError:
            pass

    network = pids = "host"
    if args.private_network:
        why_not = private_network()
        network = "private" if why_not is None else f"host: {why_not}"
        if why_not is not None:
            print(f"supervise: WARNING: no private network for the command: {why_not}", file=sys.stderr, flush=True)
    preexec = None
    if args.private_pids:
        why_not = private_pids()
        if why_not is None:
            pids, preexec = "private", _own_proc
        else:
            pids = f"host: {why_not}"
            print(f"supervise: WARNING: the command sees every process: {why_not}", file=sys.stderr, flush=True)
    env = dict(os.environ)
    env[ISOLATION_ENV] = f"network={network.split(':')[0]},pids={pids.split(':')[0]}"

    reaper = Reaper()
    started = time.monotonic()
    error = None
    child: subprocess.Popen[bytes] | None = None
    if not stop:
        try:
            command = init_command(args.command) if preexec is not None else args.command
            child = subprocess.Popen(command, start_new_session=True, pass_fds=tuple(args.pass_fd), env=env,
                                     preexec_fn=preexec)
        except (OSError, ValueError) as exc:
            error = f"cannot start {args.command[0]}: {exc}"
        else:
            reaper.child_pid = child.pid
    deadline = started + args.timeout if args.timeout > 0 else None

    reason = wait_for_child(reaper, stop, wake_r, deadline) if child is not None else "exited"
    if child is None and stop:
        reason = "terminated"
    elapsed = time.monotonic() - started

    killed, leftover = kill_tree(os.getpid(), child.pid if child else None, reaper, args.kill_wait)
    status = reaper.child_status
    exit_code = signum = None
    if status is not None:
        if os.WIFEXITED(status):
            exit_code = os.WEXITSTATUS(status)
            if preexec is not None and exit_code > 128:  # the namespace's init says the command got a signal
                exit_code, signum = None, exit_code - 128
        elif os.WIFSIGNALED(status):
            signum = os.WTERMSIG(status)
    elif child is None and error is not None:
        exit_code = EXIT_NOT_STARTED
    if child is not None and status is not None:
        child.returncode = exit_code if exit_code is not None else -(signum or 0)  # reaped by us, not by Popen

    record: dict[str, object] = {
        "exit_code": exit_code,
        "signal": signum,
        "reason": reason,
        "elapsed_s": round(elapsed, 6),
        "killed": killed,
        "leftover": leftover,
        "network": network,
        "pids": pids,
    }
    if error is not None:
        record["error"] = error
        print(f"supervise: {error}", file=sys.stderr, flush=True)
    if leftover:
        print(f"supervise: processes still alive after {args.kill_wait:g} s of SIGKILL: {leftover}",
              file=sys.stderr, flush=True)
    write_status(args.status_file, record)
    if reason == "timeout":
        return EXIT_TIMEOUT
    if reason == "terminated":
        return EXIT_TERMINATED
    if exit_code is not None:
        return exit_code
    return 128 + signum if signum else 1


if __name__ == "__main__":
    sys.exit(main())
