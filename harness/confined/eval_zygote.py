"""The fork server (zygote): evaluation workers that start in milliseconds, each still a fresh process.

A fresh evaluation worker spends ~1.5 s starting Python and importing torch, which for small models
costs more than scoring them. This process does that once per evaluation: started by the harness
(:class:`harness.eval.fork_server.ForkServer`) as

    python -m harness.confined.eval_zygote --fd N --scratch DIR [--method-dir DIR] [--builder-root DIR ...]

under the sandbox supervisor, it confines itself exactly as a worker does (Landlock while it has one
thread: read-only Python, packages, method directory and builder roots; read-write its scratch), then
imports torch, safetensors and the worker's code, and never imports any method code nor runs a torch
operation (no OpenMP or CUDA state that a fork would break). For every snapshot the harness sends a
``spawn`` request carrying, as SCM_RIGHTS, one end of a fresh socket pair; the zygote forks:

    zygote ── keeper (own session and process group, child subreaper) ── worker

* The **keeper** runs harness code only. It forks the worker, waits for it, and when the worker exits or
  the keeper is told to stop (SIGTERM from the harness, or the zygote dying) SIGKILLs every process
  still below it (a daemon the model's code detached included: the keeper is their subreaper), writes
  the worker's outcome to a status file the worker cannot write, and exits.
* The **worker** closes every inherited descriptor but its socket, points its caches and HOME at its own
  scratch folder (a subfolder of the zygote's), and enters a Landlock domain of its own, nested in the
  zygote's: writes only to its scratch folder, signals and abstract sockets scoped to itself and what it
  starts. So it cannot write another child's scratch nor the zygote's, and cannot signal or ptrace the
  zygote, its keeper or another snapshot's worker (Landlock allows both only into one's own domain or
  a nested one). Then it is an ordinary evaluation worker (:mod:`harness.confined.eval_worker`): method directory
  on sys.path, the snapshot's builder, weights as bytes, logits back.

Every worker is a copy of the zygote, which has never seen a snapshot's code, weights or windows, so it
starts as clean as a new process (the statelessness guarantee holds by construction).

Messages (see :mod:`harness.wire.framing`): ``spawn`` {scratch, env, status, release} + one descriptor ->
{ok, pid} (the keeper's pid, which is its process group); ``quit``. ``release`` lists keepers the harness
is done with, reaped only then so that a pid the harness may still signal is never reused.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import socket
import sys
import time

from harness.wire import framing
from harness.confined.eval_worker import report_error, builder_roots_of, worker_policy

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m harness.confined.eval_zygote",
                                     description="Fork evaluation workers for the harness (started by it).")
    parser.add_argument("--fd", type=int, required=True, help="inherited socket file descriptor")
    parser.add_argument("--method-dir", default=None, help="the method's directory (read-only)")
    parser.add_argument("--scratch", required=True, help="the only folder the zygote may write; children's "
                                                           "scratch folders are subfolders of it")
    parser.add_argument("--builder-root", action="append", default=[], help="a trusted builder folder (repeatable)")
    parser.add_argument("--require-sandbox", action="store_true",
                        help="refuse to run without Landlock instead of running unconfined")
    return parser.parse_args(argv)


def _prctl(option: int, value: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    zero = ctypes.c_ulong(0)
    libc.prctl(ctypes.c_int(option), ctypes.c_ulong(value), zero, zero, zero)


def _close_fds_except(*keep: int) -> None:
    """Close every descriptor but stdin/stdout/stderr and ``keep`` (the zygote's channel among them)."""
    start = 3
    for fd in sorted(k for k in keep if k >= 3):
        os.closerange(start, fd)
        start = fd + 1
    os.closerange(start, os.sysconf("SC_OPEN_MAX") if os.sysconf("SC_OPEN_MAX") > 0 else 1 << 16)


# ---------------------------------------------------------------------------------------------- worker
def _become_worker(fd: int, scratch: str, env: dict, args: argparse.Namespace) -> int:
    """In the forked worker: a nested sandbox of its own, then serve one snapshot like a fresh worker."""
    import tempfile

    from harness.confined.eval_worker import ModelServer, serve_method
    from harness.sandbox import enter_sandbox

    sock = socket.socket(fileno=fd)
    zygote_scratch = os.path.realpath(args.scratch)
    os.environ.update({str(k): str(v) for k, v in env.items()})
    tempfile.tempdir = None  # looked up again from TMPDIR, now the worker's own
    os.chdir(scratch)
    sys.path[:] = [scratch if p and os.path.realpath(p) == zygote_scratch else p for p in sys.path]
    try:
        # The zygote's domain allows writes to its whole scratch; this nested one, to the worker's alone.
        sandbox = enter_sandbox(dataclasses.replace(args.policy, read_write=(scratch,)), required=args.require_sandbox)
        sandbox["forked"] = True
    except Exception as exc:  # noqa: BLE001 - the harness records why the worker could not start
        report_error(sock, exc)
        return 1
    try:
        if "numpy" in sys.modules:  # a fresh process seeds numpy's global generator from the OS: so here
            sys.modules["numpy"].random.seed()
        from harness.confined.allocator import keep_freed_memory
        from harness.common.threads import apply_thread_setting

        keep_freed_memory()
        server = ModelServer(sock, builder_roots_of(args), sandbox)
        apply_thread_setting()  # before any operation: the zygote never started torch's thread pools
    except Exception as exc:  # noqa: BLE001
        report_error(sock, exc)
        return 1
    return serve_method(server, args.method_dir, args.builder_root)


# ---------------------------------------------------------------------------------------------- keeper
def _keep(fd: int, scratch: str, env: dict, status: str, args: argparse.Namespace) -> int:
    """In the keeper: fork the worker, wait for it (or a stop signal), kill all that is left, report."""
    from harness.sandbox.supervise import Reaper, kill_tree, wait_for_child, watch_stop_signals, write_status
    from pathlib import Path

    zygote = os.getppid()
    os.setsid()  # a process group of its own: the harness's last resort is to kill it whole
    _prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphans of the worker's tree come here, not to the supervisor
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    stop, wake_r, wake_w = watch_stop_signals()
    if os.getppid() != zygote:
        stop.append(signal.SIGTERM)  # the zygote died before PDEATHSIG was set: it will never come
    started = time.monotonic()
    reaper = Reaper()
    worker = None
    if not stop:
        worker = os.fork()
        if worker == 0:
            code = 1
            try:
                signal.set_wakeup_fd(-1)
                for signum in (*STOP_SIGNALS, signal.SIGCHLD):
                    signal.signal(signum, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a fresh Python
                os.close(wake_r)
                os.close(wake_w)
                _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
                code = _become_worker(fd, scratch, env, args)
            except BaseException:  # noqa: BLE001 - never back into the keeper's loop
                import traceback

                traceback.print_exc()
            finally:
                from harness.common.fast_exit import exit_now

                exit_now(code)
        reaper.child_pid = worker
    os.close(fd)
    reason = wait_for_child(reaper, stop, wake_r) if worker is not None else "terminated"
    elapsed = time.monotonic() - started
    killed, leftover = kill_tree(os.getpid(), None, reaper)
    exit_code = signum = None
    if reaper.child_status is not None:
        if os.WIFEXITED(reaper.child_status):
            exit_code = os.WEXITSTATUS(reaper.child_status)
        elif os.WIFSIGNALED(reaper.child_status):
            signum = os.WTERMSIG(reaper.child_status)
    write_status(Path(status), {"exit_code": exit_code, "signal": signum, "reason": reason,
                                 "elapsed_s": round(elapsed, 6), "killed": killed, "leftover": leftover,
                                 "worker_pid": worker})
    return 0


# ---------------------------------------------------------------------------------------------- zygote
def _directly_in(path: str, folder: str) -> bool:
    return os.path.dirname(os.path.realpath(path)) == folder


def _spawn(sock: socket.socket, header: dict, fds: list[int], args: argparse.Namespace) -> dict:
    scratch, status, env = header.get("scratch"), header.get("status"), header.get("env")
    zygote_scratch = os.path.realpath(args.scratch)
    if (len(fds) != 1 or not isinstance(scratch, str) or not isinstance(status, str) or not isinstance(env, dict)
            or not _directly_in(scratch, zygote_scratch) or not os.path.isdir(scratch)
            or not _directly_in(status, os.path.join(zygote_scratch, framing.STATUS_DIR))):
        raise ValueError(f"spawn needs one socket, a scratch folder in the zygote's scratch and a status file in "
                         f"its {framing.STATUS_DIR}/ folder")
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            _close_fds_except(fds[0])  # the zygote's channel too: a child never speaks for the zygote
            code = _keep(fds[0], os.path.realpath(scratch), env, status, args)
        except BaseException:  # noqa: BLE001 - never back into the zygote's loop
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    return {"ok": True, "pid": pid}


def _release(pids) -> None:
    for pid in pids if isinstance(pids, list) else ():
        if isinstance(pid, int) and pid > 0:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


def serve(sock: socket.socket, args: argparse.Namespace) -> int:
    while True:
        try:
            header, _, fds = framing.recv_with_fds(sock, 1)
        except (OSError, framing.ChannelError):
            return 0  # the harness went away: the supervisor kills what is left
        op = header.get("op")
        if op == "quit":
            return 0
        try:
            if op != "spawn":
                raise ValueError(f"unknown operation {op!r}")
            _release(header.get("release"))
            reply = _spawn(sock, header, fds, args)
        except Exception as exc:  # noqa: BLE001 - a refused request is answered, the zygote goes on
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        finally:
            for fd in fds:
                os.close(fd)  # the child has it now; no later child may inherit it
        framing.send(sock, reply)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    sock = socket.socket(fileno=args.fd)
    quiet = os.open(os.devnull, os.O_RDONLY)
    os.dup2(quiet, 0)
    os.close(quiet)
    try:
        from harness.sandbox import enter_sandbox

        args.policy = worker_policy(args.scratch, builder_roots_of(args))  # the children's too, but for their scratch
        enter_sandbox(args.policy, required=args.require_sandbox)
        # Imported once here, before the method directory is on anyone's sys.path; no torch operation
        # runs in the zygote, so no thread pool or device state reaches a fork.
        import torch  # noqa: F401

        import harness.common.threads  # noqa: F401
        from harness.sandbox import supervise  # noqa: F401 - the keeper's
    except Exception as exc:  # noqa: BLE001 - the harness records why the zygote could not start
        report_error(sock, exc)
        return 1
    return serve(sock, args)


if __name__ == "__main__":
    from harness.common.fast_exit import exit_now

    exit_now(main())
