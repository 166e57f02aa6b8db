"""Importing a method's entry point: the half that runs beside the method's code.

The method's own process imports its entry here, and so does the entry check's sandboxed child
(``harness.entry_check`` starts it). Importing runs the method's code, so this module is only ever used
inside a sandbox, and it imports nothing of the harness's own side."""

from __future__ import annotations

import importlib
import inspect
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
