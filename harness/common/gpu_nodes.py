"""Open the GPUs once in the harness's own process, before any sandboxed process needs them.

On a node that has not used CUDA since boot, `/dev/nvidia-uvm` (and the per-GPU nodes) may not exist:
the driver creates them on first use through the setuid helper `nvidia-modprobe`. Sandboxed processes run
under `no_new_privs`, where a setuid helper gains nothing, so a method's first CUDA call there fails with
an opaque error. The runner is not sandboxed: initialising CUDA in it makes the driver create the nodes,
and the sandbox's rules then find them. Node 0 did this by accident (it asks for the GPU's name while
preparing the run); the other nodes of a job and `slowrun eval` did not.
"""

from __future__ import annotations

import sys


def open_gpus(device: str) -> str | None:
    """Initialise CUDA for a `cuda` device (nothing for others); a warning text when it cannot be."""
    if not str(device).startswith("cuda"):
        return None
    import torch

    try:
        if not torch.cuda.is_available():
            return f"device {device!r} was asked for, but this PyTorch sees no CUDA device"
        torch.cuda.init()
        count = torch.cuda.device_count()
    except Exception as exc:  # the method's own CUDA calls will fail with the reason too; say it here first
        return f"CUDA could not be initialised ({type(exc).__name__}: {exc})"
    return None if count > 0 else "CUDA reports no device"


def open_gpus_or_warn(device: str) -> None:
    problem = open_gpus(device)
    if problem:
        print(f"slowrun: WARNING: {problem}; the sandboxed processes may not reach the GPUs", file=sys.stderr)


__all__ = ["open_gpus", "open_gpus_or_warn"]
