"""What a sandboxed method may touch: the policy type and the paths every Python + PyTorch process needs.

The policy is data, not code, so the runner can build it from a run's folders, record it next to the
results, and the sandbox can apply it in a fresh process. The defaults grant the interpreter, the
installed packages, the system libraries and the GPU devices, and nothing of the project's folders
except the trusted packages themselves (`harness`, `q0_reference`): their common parent also holds run
folders and the prepared data, which the method must not read.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import site
import stat
import sys
from dataclasses import dataclass
from typing import Iterable

from harness.sandbox.landlock import SandboxError

SYSTEM_READ_ONLY = (
    "/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc", "/proc", "/sys",
    "/opt",  # CUDA and vendor toolkits often live here
    "/run/nvidia-persistenced",
)
TRUSTED_PACKAGES = ("harness", "q0_reference")

BASIC_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
SHARED_MEMORY = "/dev/shm"  # torch DataLoader workers and NCCL exchange tensors through it
GPU_DEVICE_GLOBS = ("/dev/nvidia*", "/dev/nvidia-caps/*", "/dev/dri/*", "/dev/dri/*/*", "/dev/infiniband/*")


def _paths(value: Iterable[str | os.PathLike[str]], field: str) -> tuple[str, ...]:
    if isinstance(value, (str, bytes, os.PathLike)):
        raise SandboxError(f"SandboxPolicy.{field} must be a sequence of paths, got the single path {value!r}")
    paths = tuple(os.fspath(p) for p in value)
    relative = [p for p in paths if not os.path.isabs(p)]
    if relative:
        raise SandboxError(f"SandboxPolicy.{field} needs absolute paths; relative: {', '.join(relative)}")
    return paths


@dataclass(frozen=True)
class SandboxPolicy:
    """Paths the sandboxed process may use, by kind, and the resource limits it runs under.

    Anything not listed is unreadable and unwritable. `devices` are device files opened read-write (with
    ioctl, which GPUs need); a directory there (/dev/shm) is read-write except that no device node may be
    made in it. `list_only` directories can be listed but their files not opened.
    """

    read_only: tuple[str, ...]
    read_write: tuple[str, ...]
    devices: tuple[str, ...] = ()
    list_only: tuple[str, ...] = ()
    max_file_bytes: int | None = 64 << 30  # RLIMIT_FSIZE: no single file written past this
    max_open_files: int = 4096  # RLIMIT_NOFILE, never raised above the current hard limit
    # Ranks of a distributed job each sandbox themselves (one Landlock domain each) and NCCL passes
    # handles between them over abstract sockets, so a distributed run leaves those unscoped; the data
    # server still refuses a second connection for a rank it already serves.
    scope_abstract_sockets: bool = True

    def __post_init__(self) -> None:
        for field in ("read_only", "read_write", "devices", "list_only"):
            object.__setattr__(self, field, _paths(getattr(self, field), field))
        if self.max_file_bytes is not None and (not isinstance(self.max_file_bytes, int) or self.max_file_bytes < 1):
            raise SandboxError(f"SandboxPolicy.max_file_bytes must be a positive int or None, got {self.max_file_bytes!r}")
        if not isinstance(self.max_open_files, int) or self.max_open_files < 16:
            raise SandboxError(f"SandboxPolicy.max_open_files must be an int of at least 16, got {self.max_open_files!r}")


def resolved(paths: Iterable[str]) -> tuple[str, ...]:
    """Existing paths, each followed by its symlink target where that differs, without repeats.

    Landlock attaches a rule to the inode the path opens to, so the target is what matters; listing both
    keeps the recorded policy readable. A path whose resolution fails is kept as given.
    """
    out: dict[str, None] = {}
    for path in paths:
        path = os.path.abspath(os.fspath(path))
        if not os.path.exists(path):
            continue
        out[path] = None
        try:
            real = os.path.realpath(path, strict=True)
        except (OSError, RuntimeError):
            continue
        out[real] = None
    return tuple(out)


def _package_dirs(names: Iterable[str]) -> list[str]:
    dirs: list[str] = []
    for name in names:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec is not None and spec.submodule_search_locations:
            dirs.extend(os.path.realpath(p) for p in spec.submodule_search_locations)
    return dirs


def _site_dirs() -> list[str]:
    dirs: list[str] = []
    getsitepackages = getattr(site, "getsitepackages", None)  # missing in some old virtualenvs
    if getsitepackages is not None:
        dirs.extend(getsitepackages())
    user_site = site.getusersitepackages() if hasattr(site, "getusersitepackages") else None
    if user_site:
        dirs.append(user_site)
    return dirs


def base_read_only_paths() -> tuple[str, ...]:
    """What any Python + PyTorch process reads: the interpreter and its prefixes, site-packages, the system
    libraries and configuration, /proc and /sys, CUDA under /opt, and the trusted project packages."""
    executable = os.path.realpath(sys.executable) if sys.executable else ""
    candidates = [sys.base_prefix, sys.prefix, sys.exec_prefix, sys.base_exec_prefix]
    if executable:
        candidates += [executable, os.path.dirname(executable)]
    candidates += _site_dirs()
    candidates += SYSTEM_READ_ONLY
    candidates += _package_dirs(TRUSTED_PACKAGES)
    return resolved(c for c in candidates if c)


def _is_char_device(path: str) -> bool:
    try:
        return stat.S_ISCHR(os.stat(path).st_mode)
    except OSError:
        return False


def default_devices() -> tuple[str, ...]:
    """Device files a training process opens: the null/zero/random family, /dev/shm (a read-write
    directory) and every NVIDIA, DRM and InfiniBand character device present. /dev/tty is left out: the
    method has no business with the controlling terminal."""
    gpu = sorted({p for pattern in GPU_DEVICE_GLOBS for p in glob.glob(pattern) if _is_char_device(p)})
    devices = [p for p in BASIC_DEVICES if _is_char_device(p)] + gpu
    shm = [SHARED_MEMORY] if os.path.isdir(SHARED_MEMORY) else []
    return resolved(devices + shm)
