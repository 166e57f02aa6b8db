"""How an evaluation process is started: its command line, its environment and where builders may come from.

Both ways of starting one use it: a worker started on its own (``harness.eval.remote_model``) and the fork
server's zygote (``harness.eval.fork_server``). It sits below both, so neither imports the other for it."""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Sequence

from harness.rules.allow_read import env_allow_read
from harness.common.paths import PROJECT_ROOT
from harness.sandbox.environment import allowed_environment


def trusted_builder_roots() -> tuple[Path, ...]:
    """The harness's own model packages, from which a builder may always come: ``q0_reference``."""
    return (PROJECT_ROOT / "q0_reference",)


def env_builder_roots() -> tuple[Path, ...]:
    """The folders in $SLOWRUN_ALLOW_READ (the runner's extra read-only folders for the method, e.g. the
    test suite's ``tests``): where builders may come from when the caller names no folders itself."""
    return tuple(Path(p) for p in env_allow_read())


def all_builder_roots(builder_roots: Sequence[Path] | None) -> tuple[Path, ...]:
    """Every folder a builder may come from besides the method directory: :func:`trusted_builder_roots`
    and ``builder_roots`` (None: :func:`env_builder_roots`), resolved, without repeats."""
    extra = env_builder_roots() if builder_roots is None else builder_roots
    return tuple(dict.fromkeys((*trusted_builder_roots(), *(Path(r).resolve() for r in extra))))


def worker_command(module: str, fd: int, scratch: Path, method_dir: Path | None, builder_roots: Sequence[Path],
                   require_sandbox: bool) -> list[str]:
    """The command line of an evaluation process (a worker, or the fork server's zygote): `module` run with
    its socket's descriptor, its scratch folder and where snapshot builders may come from."""
    command = [sys.executable, "-s", "-m", module, "--fd", str(fd), "--scratch", str(scratch)]
    if method_dir is not None:
        command += ["--method-dir", str(method_dir)]
    for root in builder_roots:
        command += ["--builder-root", str(root)]
    if require_sandbox:
        command.append("--require-sandbox")
    return command


def supervised_process(module: str, private: Path, scratch: Path, method_dir: Path | None,
                       builder_roots: Sequence[Path], require_sandbox: bool):
    """An evaluation process (a worker, or the zygote) under the supervisor, not started yet, with the two
    ends of its socket: (supervisor, ours, theirs); close `theirs` once it started, so that the process's
    exit reads as end-of-file here. The status file sits in `private`, beside scratch, not in it: the
    process must not be able to forge its outcome. The supervisor has no timeout of its own: the limits
    run from load() and are enforced by the harness, which then tells the supervisor to stop."""
    from harness.sandbox import Supervisor

    ours, theirs = socket.socketpair()
    command = worker_command(module, theirs.fileno(), scratch, method_dir, builder_roots, require_sandbox)
    supervisor = Supervisor(command, env=worker_env(scratch), timeout_s=None, status_file=private / "status.json",
                            pass_fds=(theirs.fileno(),), cwd=scratch, private_network=True)  # no network at all
    return supervisor, ours, theirs


def worker_env(scratch: Path) -> dict[str, str]:
    from harness.sandbox import sandbox_env

    env = allowed_environment()  # the allow-list the method's own processes get, nothing more
    env.update(sandbox_env(scratch))
    env["PYTHONPATH"] = str(PROJECT_ROOT)  # the harness package, also when it is not installed
    return env
