"""Drop every Linux capability before the sandbox closes: root's powers are not the method's.

The harness often runs as root (containers, CI, this machine), and a process of root keeps capabilities
that Landlock does not cover: `mknod` made a readable twin of /dev/kmsg in scratch, and `mount` or
`ptrace` of other processes are capabilities too. The sandboxed process clears its effective, permitted,
inheritable and ambient sets and its bounding set, so neither it nor anything it executes (setuid or
root's exec) gets them back; no_new_privs, which Landlock sets, keeps it so. The uid stays 0 (files are
still root's to read where Landlock allows), which is why running as an unprivileged user remains the
stronger setup, and the runner says so when it runs as root.
"""

from __future__ import annotations

import ctypes
import os

PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap", encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 40


def held_capabilities() -> dict[str, int]:
    """The capability sets of this process, from /proc/self/status (hex masks as integers)."""
    sets = {}
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")):
                    name, value = line.split(":", 1)
                    sets[name] = int(value.strip(), 16)
    except OSError:
        pass
    return sets


def drop_capabilities() -> dict:
    """Clear every capability set of this process; returns what was held before and what is left."""
    before = held_capabilities()
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in range(_last_cap() + 1):  # the bounding set needs CAP_SETPCAP: only a privileged caller has one
        libc.prctl(ctypes.c_int(PR_CAPBSET_DROP), ctypes.c_ulong(cap), ctypes.c_ulong(0), ctypes.c_ulong(0),
                   ctypes.c_ulong(0))
    libc.prctl(ctypes.c_int(PR_CAP_AMBIENT), ctypes.c_ulong(PR_CAP_AMBIENT_CLEAR_ALL), ctypes.c_ulong(0),
               ctypes.c_ulong(0), ctypes.c_ulong(0))
    header = _Header(LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()  # all zero: nothing effective, permitted or inheritable
    if libc.capset(ctypes.byref(header), ctypes.byref(data)) != 0:
        err = ctypes.get_errno()
        from harness.sandbox.landlock import SandboxError

        raise SandboxError(f"capset failed while dropping capabilities: {os.strerror(err)} (errno {err})")
    after = held_capabilities()
    return {"held_before": f"{before.get('CapEff', 0):#x}", "left": {k: f"{v:#x}" for k, v in after.items()
                                                                        if v}}
