"""`slowrun check`'s import of a method's entry point, in a sandboxed process of its own.

Importing a module runs its code. A maintainer checking somebody's submission should not run that code
with their own rights in their own process, so the import happens in a child that first enters the same
Landlock sandbox as a training run (read-only Python, the method directory and --allow-read folders;
writes only to a temporary scratch folder) under the supervisor, with a time limit. The child prints one
JSON line: the problems it found.

    python -m harness.entry_check METHOD_DIR ENTRY
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from harness.paths import PROJECT_ROOT

IMPORT_TIMEOUT_S = 300.0


def check_entry_sandboxed(folder: Path, entry: str, allow_read: tuple[str, ...] = ()) -> list[str]:
    """Problems with importing `entry` from `folder`, found in a sandboxed child process."""
    from harness.allow_read import env_allow_read
    from harness.sandbox import sandbox_env
    from harness.sandbox.supervise import Supervisor

    with tempfile.TemporaryDirectory(prefix="slowrun-check-") as tmp:
        scratch = Path(tmp) / "scratch"
        scratch.mkdir()
        out = Path(tmp) / "problems.json"
        env = {**os.environ, **sandbox_env(scratch),
               "PYTHONPATH": str(PROJECT_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               "SLOWRUN_CHECK_READ": os.pathsep.join((*allow_read, *env_allow_read())),
               "SLOWRUN_CHECK_OUT_FD": ""}
        read_fd, write_fd = os.pipe()
        env["SLOWRUN_CHECK_OUT_FD"] = str(write_fd)
        supervisor = Supervisor([sys.executable, "-m", "harness.entry_check", str(Path(folder).resolve()), entry],
                                env=env, timeout_s=IMPORT_TIMEOUT_S, status_file=out, pass_fds=(write_fd,),
                                cwd=scratch)
        supervisor.start()
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as pipe:
            raw = pipe.read()
        result = supervisor.wait()
    if result.reason == "timeout":
        return [f"[method].entry: importing {entry!r} did not finish within {IMPORT_TIMEOUT_S:.0f} s"]
    try:
        problems = json.loads(raw.decode().strip().splitlines()[-1])
    except (ValueError, IndexError, UnicodeDecodeError):
        return [f"[method].entry: importing {entry!r} ended the checking process (exit code {result.exit_code}, "
                f"signal {result.signal}) without an answer"]
    if not isinstance(problems, list) or not all(isinstance(p, str) for p in problems):
        return [f"[method].entry: importing {entry!r} produced an unreadable answer"]
    return problems


def _main(folder: str, entry: str) -> int:
    out = os.fdopen(int(os.environ.pop("SLOWRUN_CHECK_OUT_FD")), "w")
    from harness.sandbox import SandboxPolicy, base_read_only_paths, default_devices, enter_sandbox

    extra = tuple(p for p in os.environ.pop("SLOWRUN_CHECK_READ", "").split(os.pathsep) if p)
    read_only = (folder, *extra)
    list_only = tuple(sorted({str(Path(p).parent) for p in read_only} | {str(PROJECT_ROOT)}))
    enter_sandbox(SandboxPolicy(read_only=tuple(base_read_only_paths()) + read_only,
                                read_write=(os.environ.get("TMPDIR", os.getcwd()),), devices=tuple(default_devices()),
                                list_only=list_only))
    from harness.confined.entry_import import entry_problems

    problems = entry_problems(Path(folder), entry)
    out.write(json.dumps(problems) + "\n")
    out.flush()
    return 0


if __name__ == "__main__":
    from harness.fast_exit import exit_now

    exit_now(_main(sys.argv[1], sys.argv[2]))
