"""HTTP(S) from the verifier to public internet addresses only.

`leaderboard add --verify` fetches weights from URLs a submitter wrote, on the maintainers' machine. A URL
(or a redirect from one, or a name that resolves there) could point into the maintainers' own network: a
cloud metadata service at 169.254.169.254, an admin page on 10.0.0.1, a service on localhost. The sha256
check keeps a wrong file out, but the request itself has already been made, with whatever effect a GET has
there, and the refusal's size and timing say something about what answered.

So every connection is checked where it is made, not where the URL is read: aiohttp's `socket_factory`
receives the address it is about to connect to, after DNS and after every redirect, and refuses one that is
not a global unicast address. A check of the URL's host alone would miss a redirect, a name that resolves
to a private address, and a name whose answer changes between the check and the connection.
"""

from __future__ import annotations

import collections
import errno
import ipaddress
import socket
import threading


class NotPublicAddress(OSError):
    """A connection the verifier refused to open: the address is not on the public internet."""


# fsspec runs aiohttp in a thread of its own and reports a failed connection as a file that is not there, so
# the refusals are noted here for the fetch to name (`refused_since`); fetches run one at a time.
_lock = threading.Lock()
_count = 0
_recent: collections.deque[str] = collections.deque(maxlen=8)


def refusal_mark() -> int:
    """How many connections were refused so far: pass it to `refused_since` after a fetch."""
    with _lock:
        return _count


def refused_since(mark: int) -> list[str]:
    """The addresses refused after `mark` (the last few of them)."""
    with _lock:
        return list(_recent)[-min(_count - mark, len(_recent)):] if _count > mark else []


def _note(address: str) -> None:
    global _count
    with _lock:
        _count += 1
        _recent.append(address)


def is_public(address: str) -> bool:
    """A global unicast address: not loopback, private, link-local, shared (100.64/10), reserved or multicast.

    An IPv6 address that carries an IPv4 one (mapped, 6to4, Teredo) is judged by the IPv4 address it
    reaches, since that is where the packets go."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone (`fe80::1%eth0`) is not part of it
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None:
            ip = embedded
    return ip.is_global and not ip.is_multicast


def public_socket(addr_info: tuple) -> socket.socket:
    """aiohttp's socket factory: the socket for a connection to a public address, NotPublicAddress otherwise."""
    family, kind, proto, _, sockaddr = addr_info
    if not is_public(sockaddr[0]):
        _note(sockaddr[0])
        raise NotPublicAddress(errno.EACCES, f"{sockaddr[0]} is not a public internet address; weights are "
                                             "fetched over https from public hosts only")
    return socket.socket(family, kind, proto)


async def public_client(**kwargs):
    """fsspec's `get_client` for HTTPFileSystem: a session whose every connection goes through
    `public_socket` (the connector is made here, inside the event loop that will use it)."""
    import aiohttp

    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(socket_factory=public_socket), **kwargs)
