"""Enter the sandbox from inside the process to confine: resource limits, no_new_privs, Landlock.

The method's process (and the evaluation worker) call `enter_sandbox` first thing, before importing
torch, so the untrusted code that follows can read only what the policy grants and write only to its
scratch and outbox. Where the kernel cannot confine it, the run still proceeds, loudly: the returned
description says `kind: none` and the records are marked so, rather than refusing to work on systems
without Landlock. `required=True` turns that into an error for callers that must not run unconfined.
"""

from __future__ import annotations

import errno
import os
import resource
import sys
from pathlib import Path
from typing import Any

from harness.sandbox.capabilities import drop_capabilities
from harness.sandbox.landlock import SandboxError, apply_landlock, ensure_single_threaded, probe
from harness.sandbox.policy import SandboxPolicy

SWITCH_ENV = "SLOWRUN_SANDBOX"
DISABLED_REASON = f"disabled by {SWITCH_ENV}=off"

__all__ = ["SWITCH_ENV", "SandboxError", "enter_sandbox", "sandbox_env"]


def _switched_off() -> bool:
    value = os.environ.get(SWITCH_ENV, "").strip().lower()
    if value in ("", "on", "1", "true", "yes"):
        return False
    if value in ("off", "0", "false", "no"):
        return True
    raise SandboxError(f"${SWITCH_ENV} must be 'off' (run without a sandbox) or unset, got {value!r}")


def _warn_unsandboxed(reason: str) -> None:
    bar = "WARNING: " + "=" * 70
    lines = [
        bar,
        f"WARNING: the method runs UNSANDBOXED: {reason}.",
        "WARNING: it can read and write every file this user can, including other runs and held-out data,",
        "WARNING: and signal any process of this user. Results will be marked sandbox: none.",
        bar,
    ]
    print("\n".join(lines), file=sys.stderr, flush=True)


def _lower(kind: int, wanted: int) -> int:
    """Set soft and hard limit to `wanted`, or to the current hard limit where that is lower (only root may
    raise a hard limit, and the sandbox never grants more than it found)."""
    _, hard = resource.getrlimit(kind)
    limit = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    resource.setrlimit(kind, (limit, limit))
    return limit


def _apply_rlimits(policy: SandboxPolicy) -> dict[str, int | None]:
    limits: dict[str, int | None] = {"max_file_bytes": None}
    try:
        if policy.max_file_bytes is not None:
            limits["max_file_bytes"] = _lower(resource.RLIMIT_FSIZE, policy.max_file_bytes)
        limits["max_open_files"] = _lower(resource.RLIMIT_NOFILE, policy.max_open_files)
    except (OSError, ValueError) as exc:
        raise SandboxError(f"cannot set the sandbox's resource limits: {exc}") from None
    return limits


def enter_sandbox(policy: SandboxPolicy, *, required: bool = False) -> dict[str, Any]:
    """Confine the calling process (and all it starts later) to `policy`; irreversible. Returns a JSON-able
    description for the run's record: kind "landlock" with the ABI and the paths ruled, or kind "none" with
    the reason, after a warning on stderr. Raises SandboxError when the process is multi-threaded, when a
    rule cannot be applied, or when `required` and no sandbox is possible (including ${SWITCH_ENV}=off)."""
    if _switched_off():
        if required:
            raise SandboxError(f"a sandbox is required but {SWITCH_ENV}=off disables it; unset {SWITCH_ENV}")
        _warn_unsandboxed(DISABLED_REASON)
        return {"kind": "none", "reason": DISABLED_REASON}
    abi, reason = probe()
    if abi < 1:
        if required:
            raise SandboxError(f"a sandbox is required but Landlock is unavailable: {reason}")
        limits = _apply_rlimits(policy)
        _warn_unsandboxed(reason)
        return {"kind": "none", "reason": reason, "rlimits": limits, "network": network_view()}
    ensure_single_threaded()  # before anything changes, so a refusal leaves the process as it was
    limits = _apply_rlimits(policy)
    capabilities = drop_capabilities()
    confinement = apply_landlock(
        read_only=policy.read_only,
        read_write=policy.read_write,
        devices=policy.devices,
        list_only=policy.list_only,
        scope_abstract_sockets=policy.scope_abstract_sockets,
    )
    return {
        "kind": "landlock",
        "abi": confinement.abi,
        "read_only": list(confinement.read_only),
        "read_write": list(confinement.read_write),
        "devices": list(confinement.devices),
        "list_only": list(confinement.list_only),
        "skipped": list(confinement.skipped),
        "scopes": list(confinement.scopes),
        "rlimits": limits,
        "capabilities": capabilities,
        "network": network_view(),
    }


def network_view() -> dict[str, Any]:
    """The network this process can use: `private` when loopback is its only interface (the supervisor
    gave its tree a namespace of its own), else `host`, with the interfaces it sees."""
    import socket

    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError as exc:
        return {"kind": "unknown", "reason": str(exc)}
    from harness.sandbox.supervise import ISOLATION_ENV

    pids = dict(item.split("=", 1) for item in os.environ.get(ISOLATION_ENV, "").split(",") if "=" in item)
    return {"kind": "private" if names == ["lo"] else "host", "interfaces": names,
            "processes": pids.get("pids", "host")}


# Variables that point well-behaved libraries' caches and temporary files into scratch, relative to it.
_CACHE_DIRS = {
    "TMPDIR": "tmp",
    "TEMP": "tmp",
    "TMP": "tmp",
    "XDG_CACHE_HOME": "cache",
    "TORCHINDUCTOR_CACHE_DIR": "cache/torchinductor",
    "TRITON_CACHE_DIR": "cache/triton",
    "TORCH_EXTENSIONS_DIR": "cache/torch_extensions",
    "MPLCONFIGDIR": "cache/matplotlib",
    "HF_HOME": "cache/huggingface",
    "TORCH_HOME": "cache/torch",
    "CUDA_CACHE_PATH": "cache/nv",
}


def sandbox_env(scratch: Path, *, pycache_prefix: bool = False) -> dict[str, str]:
    """Environment variables for a sandboxed child so libraries keep their caches and temporary files in
    scratch (and HOME=scratch for the rest), instead of failing on a write the sandbox denies.

    Python's bytecode is not written at all (PYTHONDONTWRITEBYTECODE=1) rather than redirected with
    PYTHONPYCACHEPREFIX: a prefix also makes Python ignore the existing __pycache__ next to the sources,
    so every run would recompile all of torch (about 2 s more per process, measured). Pass
    `pycache_prefix=True` to redirect it into scratch anyway.
    """
    scratch = Path(scratch).resolve()
    scratch.mkdir(parents=True, exist_ok=True)  # the folder itself is the harness's; below it, the method's
    env = {name: str(scratch / sub) for name, sub in _CACHE_DIRS.items()}
    if pycache_prefix:
        env["PYTHONPYCACHEPREFIX"] = str(scratch / "cache" / "pycache")
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    for name, value in env.items():
        if name != "PYTHONDONTWRITEBYTECODE":
            make_folders_beneath(scratch, Path(value).relative_to(scratch))
    env["HOME"] = str(scratch)
    if 1 <= probe()[0] < 2:  # no rename between folders (REFER): Triton's own cache would fail (EXDEV)
        env["TRITON_CACHE_MANAGER"] = TRITON_SAME_FOLDER_CACHE
    return env


# Triton's kernel cache for kernels with Landlock ABI 1 (see the module).
TRITON_SAME_FOLDER_CACHE = "harness.sandbox.triton_cache:SameFolderCacheManager"


def make_folders_beneath(root: Path, relative: Path) -> None:
    """`mkdir -p root/relative` that follows no link below `root`.

    Scratch is the method's: on a resumed run it holds whatever the last session left, and a link it left
    at `cache` would have had the harness (as root) make `cache/torchinductor` wherever the link pointed.
    Each folder is opened with O_NOFOLLOW from its parent's descriptor; a link or a file where a folder
    belongs is the method's own entry in its own folder, so it is removed and the folder made."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(root, flags)
    try:
        for part in Path(relative).parts:
            try:
                os.mkdir(part, 0o755, dir_fd=fd)
            except FileExistsError:
                pass
            try:
                child = os.open(part, flags, dir_fd=fd)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                os.unlink(part, dir_fd=fd)  # a link or a file: removed, never followed
                os.mkdir(part, 0o755, dir_fd=fd)
                child = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)
