"""Confinement for untrusted method code: Landlock rules entered from inside the process, and a supervisor
that owns the process tree from outside it.

The method's process and the evaluation worker call `enter_sandbox(policy)` before importing anything
heavy; the runner starts them under a `Supervisor` (``supervisor``: the harness's handle), which runs the
supervisor process (``supervise``: standard library only, started by file path) that kills everything they
leave behind.

Who may import it: both sides. The confined processes enter their sandbox with it (``enter``, ``policy``,
``landlock``, ``capabilities``, ``environment``) and the evaluation zygote's keeper uses the supervisor's tree
mechanics; the harness starts supervisors. It imports only :mod:`harness.errors` and the standard library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.sandbox.enter import SWITCH_ENV, enter_sandbox, sandbox_env
from harness.sandbox.landlock import SandboxError, landlock_abi
from harness.sandbox.policy import SandboxPolicy, base_read_only_paths, default_devices

if TYPE_CHECKING:
    from harness.sandbox.supervisor import SupervisedResult, Supervisor

_SUPERVISE = ("SupervisedResult", "Supervisor")


def __getattr__(name: str) -> object:
    # Imported on first use, so `python -m harness.sandbox.supervise` does not find its own module
    # already imported by the package (runpy warns about that: supervisor imports a constant of it).
    if name in _SUPERVISE:
        from harness.sandbox import supervisor

        return getattr(supervisor, name)
    raise AttributeError(f"module 'harness.sandbox' has no attribute {name!r}")


__all__ = [
    "SWITCH_ENV",
    "SandboxError",
    "SandboxPolicy",
    "SupervisedResult",
    "Supervisor",
    "base_read_only_paths",
    "default_devices",
    "enter_sandbox",
    "landlock_abi",
    "sandbox_env",
]
