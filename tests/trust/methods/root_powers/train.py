"""Root's powers. Running as root (as CI and containers do), the method kept every capability: `mknod` in
scratch made a readable twin of /dev/kmsg. It tries mknod, mount and ptrace of its parent, reads its
capability sets, reports, then trains."""

import ctypes
import os
import stat

from tests.trust.methods.common import attempt, train_and_snapshot


def _mount():
    libc = ctypes.CDLL(None, use_errno=True)
    target = str(ctx_scratch)
    if libc.mount(b"none", target.encode(), b"tmpfs", 0, None) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


def _ptrace_parent():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.ptrace(16, os.getppid(), None, None) != 0:  # PTRACE_ATTACH
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


def main(ctx):
    global ctx_scratch
    ctx_scratch = ctx.scratch_dir / "mnt"
    ctx_scratch.mkdir(exist_ok=True)
    tried = {
        "mknod": attempt(lambda: os.mknod(str(ctx.scratch_dir / "kmsg"), stat.S_IFCHR | 0o600, os.makedev(1, 11))),
        "mount": attempt(_mount),
        "ptrace": attempt(_ptrace_parent),
    }
    with open("/proc/self/status") as f:
        caps = {line.split(":")[0]: line.split(":")[1].strip() for line in f if line.startswith("Cap")}
    ctx.log(**tried, cap_eff=caps["CapEff"], cap_bnd=caps["CapBnd"], uid=os.getuid())
    train_and_snapshot(ctx)
