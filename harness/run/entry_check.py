"""`slowrun check`'s import of a method's entry point, in a sandboxed process of its own.

Importing a module runs its code. A maintainer checking somebody's submission should not run that code
with their own rights in their own process, so the import happens in a child that first enters the same
Landlock sandbox as a training run (read-only Python, the method directory and --allow-read folders;
writes only to a temporary scratch folder) under the supervisor, with a time limit. The child prints one
JSON line: the problems it found. That child is :mod:`harness.confined.entry_import`; this module is the
harness's side, and also where `slowrun check` puts the parse of method.toml and the import together.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from harness.common.paths import PROJECT_ROOT
from harness.formats.method_toml import MethodSpec, declared_entry, read_method

IMPORT_TIMEOUT_S = 300.0


def check_entry_sandboxed(folder: Path, entry: str, allow_read: tuple[str, ...] = ()) -> list[str]:
    """Problems with importing `entry` from `folder`, found in a sandboxed child process."""
    from harness.rules.allow_read import env_allow_read
    from harness.sandbox import sandbox_env
    from harness.sandbox.supervisor import Supervisor

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
        supervisor = Supervisor([sys.executable, "-m", "harness.confined.entry_import", str(Path(folder).resolve()), entry],
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


def check_method(folder: str | Path, track_files: tuple[str, ...] | list[str] = (),
                 import_check: bool = True) -> tuple[MethodSpec | None, list[str]]:
    """`slowrun check`: method.toml's problems, then (when its entry is well formed and `import_check`) those
    of importing the entry in a sandboxed child; (spec or None, every problem found)."""
    spec, problems = read_method(folder, track_files)
    # the spec's entry when the file is whole; else the entry as declared, checked despite the other problems
    entry = None if not import_check else spec.entry if spec is not None else declared_entry(folder)
    if entry is not None:
        problems = problems + _check_entry(Path(folder), entry)
    return (spec if not problems else None), problems


def _check_entry(folder: Path, entry: str) -> list[str]:
    """The entry's module exists here; importing it (which runs the method's code) happens in a sandboxed
    child process."""
    module_name, function = entry.split(":")
    module_file = folder / (module_name.replace(".", "/") + ".py")
    package_init = folder / module_name.replace(".", "/") / "__init__.py"
    if not module_file.is_file() and not package_init.is_file():
        return [f"[method].entry: module {module_name!r} not found ({module_file.name} is not in {folder})"]
    return check_entry_sandboxed(folder, entry)
