"""Who is at the other end of a Unix socket: the data server serves only the processes of its own run.

The server's socket file lives in a private folder, but the method runs as the same user as the harness
(root, on most GPU nodes), and a path on a shared file system is reachable by any process that knows it:
a method scanning `/tmp` for `slowrun-server-*` folders finds every concurrent run's socket. The run's
token guards the hello, yet a token is a secret that one leak undoes. The kernel knows, for every
connection on a Unix socket, the process that made it (SO_PEERCRED, fixed at connect(), translated into
the reader's PID namespace), and the harness knows which process tree is its run's: the supervisor it
started. A connection whose process is not in that tree is closed before its first byte is read,
whatever it sends. TCP connections (the ranks of other nodes) carry no such credential; they have the
token alone (docs/threat-model.md).
"""

from __future__ import annotations

import socket
import struct

MAX_DEPTH = 64  # parent links walked before giving up: run trees are a handful deep (supervisor, init, torchrun, rank)
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_pid(sock: socket.socket) -> int | None:
    """The pid of the process that connected `sock` (a Unix stream socket), in this process's PID
    namespace; None where the kernel cannot say (0: the peer is in a namespace this one cannot see)."""
    try:
        pid, _, _ = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    except OSError:
        return None
    return pid if pid > 0 else None


def parent_pid(pid: int) -> int | None:
    """`pid`'s parent from /proc (None once it has ended)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        # The command name in parentheses may hold spaces and parentheses: the fields start after the last ')'.
        return int(data[data.rindex(b")") + 2:].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def in_tree(pid: int, root: int) -> bool:
    """Whether `pid` is `root` or one of its descendants now. A process that re-parented itself away
    from the tree (a daemon that double-forked) is not in it any more: it is not a rank."""
    for _ in range(MAX_DEPTH):
        if pid == root:
            return True
        if pid <= 1:
            return False
        parent = parent_pid(pid)
        if parent is None:
            return False
        pid = parent
    return False


__all__ = ["in_tree", "parent_pid", "peer_pid"]
