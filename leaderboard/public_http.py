"""HTTPS from the verifier to public internet addresses only.

`leaderboard add --verify` fetches weights from URLs a submitter wrote, on the maintainers' machine. A URL
(or a redirect from one, or a name that resolves there) could point into the maintainers' own network: a
cloud metadata service at 169.254.169.254, an admin page on 10.0.0.1, a service on localhost. The sha256
check keeps a wrong file out, but the request itself has already been made, with whatever effect a GET has
there, and the refusal's size and timing say something about what answered.

So every connection is checked where it is made, not where the URL is read: aiohttp's `socket_factory`
receives the address it is about to connect to, after DNS and after every redirect, and refuses one that is
not a global unicast address. A check of the URL's host alone would miss a redirect, a name that resolves
to a private address, and a name whose answer changes between the check and the connection. A client
middleware, which aiohttp runs for every hop of a redirect, refuses a hop that is not https: a redirect
to plain http would send the request in clear text to whatever host it names.

fsspec reports a failed connection as a missing file; `refusal_in` finds the refusal in the exception's
chain, so the fetch can say why without saying where a name led (the verifier's output may reach the
bundle's author, and the address a name resolves to inside the verifier's network is none of theirs).
"""

from __future__ import annotations

import errno
import ipaddress
import socket

SCHEMES = frozenset({"https"})  # what every hop of a fetch may use (a test lets plain http in)
_PUBLIC_V6 = ipaddress.ip_network("2000::/3")  # global unicast; everything else in IPv6 is not the internet
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # well-known NAT64: the IPv4 address in its last 32 bits
_REFUSED = "not a public internet address"


class NotPublicAddress(OSError):
    """A connection the verifier refused to open: the address is not on the public internet."""


class NotHttps(Exception):
    """A hop of a fetch (a redirect) that is not https."""


def is_public(address: str) -> bool:
    """A global unicast address: not loopback, private, link-local, shared (100.64/10), reserved, site-local
    or multicast.

    An IPv6 address that carries an IPv4 one (mapped, NAT64, 6to4, Teredo) is judged by the IPv4 address it
    reaches, since that is where the packets go. Other IPv6 addresses must be global unicast (2000::/3):
    the old IPv4-compatible and translated forms and local-use NAT64 (64:ff9b:1::/48) are not."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone (`fe80::1%eth0`) is not part of it
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            ip = embedded
        elif ip not in _PUBLIC_V6:
            return False
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or getattr(ip, "is_site_local", False))


def public_socket(addr_info: tuple) -> socket.socket:
    """aiohttp's socket factory: the socket for a connection to a public address, NotPublicAddress otherwise."""
    family, kind, proto, _, sockaddr = addr_info
    if not is_public(sockaddr[0]):
        raise NotPublicAddress(errno.EACCES, _REFUSED)
    return socket.socket(family, kind, proto)


async def https_only(request, handler):
    """aiohttp client middleware, run for the first request and for every redirect it follows."""
    if request.url.scheme not in SCHEMES:
        raise NotHttps(f"a hop to {request.url.scheme}:// ({', '.join(sorted(SCHEMES))} only)")
    return await handler(request)


async def public_client(**kwargs):
    """fsspec's `get_client` for HTTPFileSystem: a session whose every connection goes through
    `public_socket` and every hop through `https_only` (the connector is made here, inside the event loop
    that will use it)."""
    import aiohttp

    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(socket_factory=public_socket),
                                 middlewares=(https_only,), **kwargs)


def refusal_in(exc: BaseException) -> str | None:
    """Why the guard refused the fetch that raised `exc`, if it did: found along the exception's causes,
    contexts and aiohttp's `os_error`. When several addresses were tried and all failed, aiohappyeyeballs
    joins their messages into one OSError, so the message is looked for too."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, NotHttps):
            return f"it (or a redirect from it) is not https: {current}"
        if isinstance(current, NotPublicAddress) or (isinstance(current, OSError) and _REFUSED in str(current)):
            return "it (or a redirect from it) leads to an address that is not on the public internet"
        for linked in (current.__cause__, current.__context__, getattr(current, "os_error", None)):
            if isinstance(linked, BaseException):
                todo.append(linked)
    return None
