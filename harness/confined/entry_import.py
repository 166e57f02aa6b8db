"""Importing a method's entry point: the half that runs beside the method's code.

The method's own process imports its entry here, and the entry check's sandboxed child runs this module
(``python -m harness.confined.entry_import METHOD_DIR ENTRY``, started by ``harness.run.entry_check``): it
enters the sandbox, imports, and writes one JSON line of problems to the descriptor it was given. Importing runs the method's code, so this module is only ever used
inside a sandbox, and it imports nothing of the harness's own side."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
from pathlib import Path


def import_entry(folder: Path, entry: str):
    """Import the entry function with the method directory first on sys.path (its own modules win)."""
    module_name, _, function = entry.partition(":")
    folder = folder.resolve()
    folder_str = str(folder)
    if folder_str in sys.path:
        sys.path.remove(folder_str)
    sys.path.insert(0, folder_str)
    _forget_foreign_modules(folder)
    module = importlib.import_module(module_name)
    return getattr(module, function)


def _forget_foreign_modules(folder: Path) -> None:
    """Drop cached modules that share a name with this method's modules but live elsewhere (another
    method's `train`, say), so the import below finds this directory's own files."""
    names = {p.stem for p in folder.glob("*.py")} | {p.parent.name for p in folder.glob("*/__init__.py")}
    for name in list(sys.modules):
        top = name.split(".")[0]
        if top not in names:
            continue
        file = getattr(sys.modules[name], "__file__", None)
        if file is None or not Path(file).resolve().is_relative_to(folder):
            del sys.modules[name]


def entry_problems(folder: Path, entry: str) -> list[str]:
    """Import the entry in this process and check it takes one argument (run inside the sandbox)."""
    module_name, function = entry.split(":")
    module_file = folder / (module_name.replace(".", "/") + ".py")
    try:
        fn = import_entry(folder, entry)
    except AttributeError:
        return [f"[method].entry: {module_file.name} has no function {function!r}"]
    except Exception as exc:  # any import-time error of the method's code
        return [f"[method].entry: importing {module_name!r} fails: {type(exc).__name__}: {exc}"]
    if not callable(fn):
        return [f"[method].entry: {entry} is not a function"]
    try:
        inspect.signature(fn).bind(object())
    except TypeError:
        return [f"[method].entry: {entry} must take exactly one argument, the RunContext"]
    except ValueError:
        pass  # builtins without a signature: let the run decide
    return []


def _check_in_sandbox(folder: str, entry: str) -> int:
    out = os.fdopen(int(os.environ.pop("SLOWRUN_CHECK_OUT_FD")), "w")
    from harness.common.paths import PROJECT_ROOT
    from harness.sandbox import SandboxPolicy, base_read_only_paths, default_devices, enter_sandbox

    extra = tuple(p for p in os.environ.pop("SLOWRUN_CHECK_READ", "").split(os.pathsep) if p)
    read_only = (folder, *extra)
    list_only = tuple(sorted({str(Path(p).parent) for p in read_only} | {str(PROJECT_ROOT)}))
    enter_sandbox(SandboxPolicy(read_only=tuple(base_read_only_paths()) + read_only,
                                read_write=(os.environ.get("TMPDIR", os.getcwd()),), devices=tuple(default_devices()),
                                list_only=list_only))
    problems = entry_problems(Path(folder), entry)
    out.write(json.dumps(problems) + "\n")
    out.flush()
    return 0


if __name__ == "__main__":
    from harness.common.fast_exit import exit_now

    exit_now(_check_in_sandbox(sys.argv[1], sys.argv[2]))
