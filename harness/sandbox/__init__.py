"""Confinement for untrusted method code: Landlock rules entered from inside the process, and a supervisor
that owns the process tree from outside it.

The method's process and the evaluation worker call `enter_sandbox(policy)` before importing anything
heavy; the runner starts them under a `Supervisor`, which kills everything they leave behind. Both use
only the standard library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.sandbox.enter import SWITCH_ENV, enter_sandbox, sandbox_env
from harness.sandbox.landlock import SandboxError, landlock_abi
from harness.sandbox.policy import SandboxPolicy, base_read_only_paths, default_devices

if TYPE_CHECKING:
    from harness.sandbox.supervise import SupervisedResult, Supervisor

_SUPERVISE = ("SupervisedResult", "Supervisor")


def __getattr__(name: str) -> object:
    # Imported on first use, so `python -m harness.sandbox.supervise` does not find its own module
    # already imported by the package (runpy warns about that).
    if name in _SUPERVISE:
        from harness.sandbox import supervise

        return getattr(supervise, name)
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
