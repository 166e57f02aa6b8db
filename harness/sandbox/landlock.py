"""Landlock through ctypes: confine the calling process's filesystem access, signals and abstract sockets.

Landlock is the one Linux sandbox an unprivileged process can apply to itself, with no helper binary,
no namespaces and no root: the process builds a ruleset (which paths it may still touch, and how),
then restricts itself and every process it starts afterwards, irreversibly. Nothing here needs a
package beyond the standard library, so the method's process can confine itself before it imports
anything heavy.

The ruleset handles every filesystem right the running kernel knows (anything not granted by a rule
is denied) and, from ABI 6, scopes signals and abstract UNIX sockets to the sandbox's own domain, so the
method cannot signal the harness nor reach a socket a process outside the sandbox listens on. Network
rights are deliberately left unhandled: distributed training needs TCP between ranks.

Syscall numbers 444-446 are the same in the generic table every current architecture uses (x86_64,
aarch64, riscv64 and the 32-bit ones alike).
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import sys
import threading
from dataclasses import dataclass
from typing import Iterable

from harness.errors import SlowrunError


class SandboxError(SlowrunError):
    """The sandbox cannot be entered (or was required and is unavailable); the message says why and what to do."""


SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446

LANDLOCK_CREATE_RULESET_VERSION = 1 << 0
LANDLOCK_RULE_PATH_BENEATH = 1

PR_SET_NO_NEW_PRIVS = 38

# Filesystem access rights, with the ABI version that introduced each.
ACCESS_FS_EXECUTE = 1 << 0
ACCESS_FS_WRITE_FILE = 1 << 1
ACCESS_FS_READ_FILE = 1 << 2
ACCESS_FS_READ_DIR = 1 << 3
ACCESS_FS_REMOVE_DIR = 1 << 4
ACCESS_FS_REMOVE_FILE = 1 << 5
ACCESS_FS_MAKE_CHAR = 1 << 6
ACCESS_FS_MAKE_DIR = 1 << 7
ACCESS_FS_MAKE_REG = 1 << 8
ACCESS_FS_MAKE_SOCK = 1 << 9
ACCESS_FS_MAKE_FIFO = 1 << 10
ACCESS_FS_MAKE_BLOCK = 1 << 11
ACCESS_FS_MAKE_SYM = 1 << 12
ACCESS_FS_REFER = 1 << 13  # ABI 2
ACCESS_FS_TRUNCATE = 1 << 14  # ABI 3
ACCESS_FS_IOCTL_DEV = 1 << 15  # ABI 5

ACCESS_FS_ABI1 = (1 << 13) - 1  # execute .. make_sym

SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1  # ABI 6

# Rights that may appear in a rule on something other than a directory; any other right there is EINVAL.
FILE_RIGHTS = ACCESS_FS_EXECUTE | ACCESS_FS_WRITE_FILE | ACCESS_FS_READ_FILE | ACCESS_FS_TRUNCATE | ACCESS_FS_IOCTL_DEV

READ_ONLY_RIGHTS = ACCESS_FS_EXECUTE | ACCESS_FS_READ_FILE | ACCESS_FS_READ_DIR
LIST_ONLY_RIGHTS = ACCESS_FS_READ_DIR
DEVICE_RIGHTS = ACCESS_FS_READ_FILE | ACCESS_FS_WRITE_FILE | ACCESS_FS_IOCTL_DEV
# A directory among the devices (/dev/shm) is read-write, except that no device node may be made in it:
# as root, a character or block node made there would open any device (the raw disk) past the rules.
NO_DEVICE_NODES = ~(ACCESS_FS_MAKE_CHAR | ACCESS_FS_MAKE_BLOCK)


def handled_access_fs(abi: int) -> int:
    """Every filesystem right the kernel with this ABI knows: handling a right is what makes it denied by default."""
    if abi < 1:
        return 0
    rights = ACCESS_FS_ABI1
    if abi >= 2:
        rights |= ACCESS_FS_REFER
    if abi >= 3:
        rights |= ACCESS_FS_TRUNCATE
    if abi >= 5:
        rights |= ACCESS_FS_IOCTL_DEV
    return rights


def scopes(abi: int) -> int:
    """The IPC scopes to apply: signals and abstract UNIX sockets, which only ABI 6 and later can confine."""
    return SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0


class _RulesetAttr(ctypes.Structure):
    # struct landlock_ruleset_attr; the kernel reads only the prefix its ABI knows (size given per ABI).
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    # struct landlock_path_beneath_attr is __attribute__((packed)): 12 bytes.
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _ruleset_attr_size(abi: int) -> int:
    if abi >= 6:
        return ctypes.sizeof(_RulesetAttr)
    if abi >= 4:
        return _RulesetAttr.scoped.offset
    return _RulesetAttr.handled_access_net.offset


_LIBC: ctypes.CDLL | None = None


def _libc() -> ctypes.CDLL | None:
    global _LIBC
    if _LIBC is None and sys.platform.startswith("linux"):
        try:
            _LIBC = ctypes.CDLL(None, use_errno=True)
        except OSError:
            return None
        _LIBC.syscall.restype = ctypes.c_long
        _LIBC.prctl.restype = ctypes.c_int
    return _LIBC


def _syscall(number: int, *args: object) -> int:
    """One raw syscall: the result, or OSError with the errno (the caller words the message)."""
    libc = _libc()
    if libc is None:
        raise OSError(errno.ENOSYS, "no libc")
    ctypes.set_errno(0)
    result = libc.syscall(ctypes.c_long(number), *args)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def probe() -> tuple[int, str]:
    """The Landlock ABI version (0 when unusable) and, when 0, a sentence saying why."""
    if not sys.platform.startswith("linux"):
        return 0, f"Landlock is Linux-only and this system is {sys.platform}"
    if _libc() is None:
        return 0, "the C library cannot be loaded through ctypes"
    try:
        abi = _syscall(
            SYS_LANDLOCK_CREATE_RULESET,
            ctypes.c_void_p(None),
            ctypes.c_size_t(0),
            ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION),
        )
    except OSError as exc:
        if exc.errno == errno.ENOSYS:
            return 0, "this kernel has no Landlock (it needs Linux 5.13 or later built with CONFIG_SECURITY_LANDLOCK)"
        if exc.errno == errno.EOPNOTSUPP:
            return 0, "Landlock is built into this kernel but disabled (add 'landlock' to the lsm= boot parameter)"
        return 0, f"the Landlock version query failed: {exc.strerror} (errno {exc.errno})"
    return int(abi), ""


def landlock_abi() -> int:
    """The running kernel's Landlock ABI version, or 0 where Landlock is unavailable (other OS, old or disabled)."""
    return probe()[0]


def thread_count() -> int:
    """Threads in this process as the kernel sees them: torch and numpy start native pools Python does not list."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def ensure_single_threaded() -> None:
    """Refuse to confine a multi-threaded process: Landlock restricts only the calling thread (and its future
    children), so every other thread would keep running with full access."""
    python_threads = threading.active_count()
    native_threads = thread_count()
    if python_threads != 1 or native_threads != 1:
        raise SandboxError(
            f"cannot enter the sandbox: this process runs {max(python_threads, native_threads)} threads "
            f"({python_threads} started from Python). Landlock confines only the calling thread, so the others "
            "would stay unconfined. Enter the sandbox first thing in the process, before starting threads or "
            "importing torch or numpy (their thread pools start at import)."
        )


def prctl_no_new_privs() -> None:
    """Set no_new_privs: Landlock requires it of an unprivileged caller, and it stops setuid binaries from
    regaining what the sandbox takes away."""
    libc = _libc()
    if libc is None:
        raise SandboxError("cannot set no_new_privs: the C library cannot be loaded through ctypes")
    ctypes.set_errno(0)
    if libc.prctl(ctypes.c_int(PR_SET_NO_NEW_PRIVS), ctypes.c_ulong(1), ctypes.c_ulong(0), ctypes.c_ulong(0),
                  ctypes.c_ulong(0)) != 0:
        err = ctypes.get_errno()
        raise SandboxError(f"prctl(PR_SET_NO_NEW_PRIVS) failed: {os.strerror(err)} (errno {err})")


@dataclass(frozen=True)
class Confinement:
    """What Landlock was told: the paths that got a rule, per kind, and those skipped because they do not exist."""

    abi: int
    read_only: tuple[str, ...]
    read_write: tuple[str, ...]
    devices: tuple[str, ...]
    list_only: tuple[str, ...]
    skipped: tuple[str, ...]
    scopes: tuple[str, ...]


def _allowed_for(kind: str, mode: int, handled: int) -> int:
    """The rights a rule of this kind grants on an inode of this type, limited to what the ruleset handles."""
    is_dir = stat.S_ISDIR(mode)
    if kind == "read_only":
        rights = READ_ONLY_RIGHTS
    elif kind == "read_write":
        rights = handled & NO_DEVICE_NODES  # a writable folder never holds a device node the method made
    elif kind == "list_only":
        rights = LIST_ONLY_RIGHTS
    elif kind == "devices":
        rights = handled & NO_DEVICE_NODES if is_dir else DEVICE_RIGHTS
    else:  # pragma: no cover - internal
        raise ValueError(kind)
    if not is_dir:
        rights &= FILE_RIGHTS
    return rights & handled


def _add_rule(ruleset_fd: int, path: str, kind: str, handled: int) -> bool:
    """Add one path-beneath rule; False when the path does not exist (or the kind grants nothing on it)."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise SandboxError(f"cannot open {path} for a sandbox rule ({kind}): {exc.strerror}") from None
    try:
        allowed = _allowed_for(kind, os.fstat(fd).st_mode, handled)
        if not allowed:
            return False
        attr = _PathBeneathAttr(allowed_access=allowed, parent_fd=fd)
        try:
            _syscall(SYS_LANDLOCK_ADD_RULE, ctypes.c_int(ruleset_fd), ctypes.c_int(LANDLOCK_RULE_PATH_BENEATH),
                     ctypes.byref(attr), ctypes.c_uint32(0))
        except OSError as exc:
            raise SandboxError(
                f"landlock_add_rule failed for {path} ({kind}, rights {allowed:#x}): {exc.strerror} (errno {exc.errno})"
            ) from None
        return True
    finally:
        os.close(fd)


def apply_landlock(
    *,
    read_only: Iterable[str],
    read_write: Iterable[str],
    devices: Iterable[str] = (),
    list_only: Iterable[str] = (),
    scope_abstract_sockets: bool = True,
    as_abi: int | None = None,
) -> Confinement:
    """Confine this process, and everything it starts later, to the given paths; irreversible.

    Read-only paths may be read and executed, read-write paths are fully usable, devices may be read,
    written and (ABI 5+) ioctl'ed, list-only directories may only be listed. Paths that do not exist are
    skipped. Must be called while the process has a single thread. `as_abi` applies the ruleset an older
    kernel would (its rights and scopes only): how the tests reproduce ABI 1's refusals on a newer kernel.
    """
    ensure_single_threaded()
    abi, reason = probe()
    if abi < 1:
        raise SandboxError(f"Landlock is unavailable: {reason}")
    if as_abi is not None:
        if not 1 <= as_abi <= abi:
            raise SandboxError(f"cannot apply Landlock ABI {as_abi} rules on a kernel with ABI {abi}")
        abi = as_abi
    handled = handled_access_fs(abi)
    scoped = scopes(abi)
    if not scope_abstract_sockets:
        scoped &= ~SCOPE_ABSTRACT_UNIX_SOCKET
    attr = _RulesetAttr(handled_access_fs=handled, handled_access_net=0, scoped=scoped)
    try:
        ruleset_fd = _syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(_ruleset_attr_size(abi)),
                              ctypes.c_uint32(0))
    except OSError as exc:
        raise SandboxError(f"landlock_create_ruleset failed (ABI {abi}): {exc.strerror} (errno {exc.errno})") from None
    added: dict[str, list[str]] = {"read_only": [], "read_write": [], "devices": [], "list_only": []}
    skipped: list[str] = []
    try:
        for kind, paths in (("read_only", read_only), ("read_write", read_write), ("devices", devices),
                            ("list_only", list_only)):
            for path in paths:
                path = os.fspath(path)
                (added[kind] if _add_rule(ruleset_fd, path, kind, handled) else skipped).append(path)
        prctl_no_new_privs()
        try:
            _syscall(SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset_fd), ctypes.c_uint32(0))
        except OSError as exc:
            raise SandboxError(f"landlock_restrict_self failed: {exc.strerror} (errno {exc.errno})") from None
    finally:
        os.close(ruleset_fd)
    scope_names = []
    if scoped & SCOPE_ABSTRACT_UNIX_SOCKET:
        scope_names.append("abstract_unix_socket")
    if scoped & SCOPE_SIGNAL:
        scope_names.append("signal")
    return Confinement(
        abi=abi,
        read_only=tuple(added["read_only"]),
        read_write=tuple(added["read_write"]),
        devices=tuple(added["devices"]),
        list_only=tuple(added["list_only"]),
        skipped=tuple(dict.fromkeys(skipped)),
        scopes=tuple(scope_names),
    )
