"""A bundle's weight URLs cannot make the verifier connect into its own network.

`leaderboard add --verify` fetches from URLs the submitter wrote. Each attack below names (or redirects to)
an address on the verifier's machine, where a listening socket counts the connections it receives: the
fetch must be refused before any connection is made, not after a wrong sha256.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from leaderboard import public_http, storage
from leaderboard.public_http import is_public
from leaderboard.storage import StorageError, fetch

SHA = hashlib.sha256(b"weights").hexdigest()


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.8.9.10", "::1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
    "0.0.0.0", "::", "fd00::1", "fe80::1%eth0", "224.0.0.1", "ff02::1", "255.255.255.255",
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "2002:a00:1::1", "not an address",
    # IPv6 forms that carry or reach an inside address: IPv4-compatible, IPv4-translated, NAT64 (well-known and
    # local-use), old site-local
    "::7f00:1", "::ffff:0:7f00:1", "64:ff9b::a9fe:a9fe", "64:ff9b:1::a00:1", "fec0::1",
])
def test_addresses_inside_a_network_are_not_public(address):
    assert not is_public(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.215.14", "2606:4700:4700::1111", "::ffff:8.8.8.8",
                                     "64:ff9b::808:808"])  # 8.8.8.8 through NAT64
def test_global_unicast_addresses_are_public(address):
    assert is_public(address)


class Listener:
    """A TCP port on this machine that counts the connections made to it (and closes each at once, so a
    client that did connect fails fast instead of waiting for an answer)."""

    def __init__(self, host: str):
        self.sock = socket.socket()
        self.sock.bind((host, 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.count = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed by the fixture
                return
            self.count += 1
            conn.close()

    def connections(self, at_least: int = 0) -> int:
        """The count so far, after waiting (up to 10 s) for `at_least` connections to be accepted."""
        deadline = time.monotonic() + 10
        while self.count < at_least and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.count


@pytest.fixture
def listener():
    spot = Listener("127.0.0.1")
    yield spot
    spot.sock.shutdown(socket.SHUT_RDWR)
    spot.sock.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[0:0:0:0:0:ffff:7f00:1]"])  # IPv4 in IPv6 form
def test_an_https_url_on_the_verifiers_machine_is_refused_before_connecting(tmp_path, listener, host):
    with pytest.raises(StorageError, match="not on the public internet") as refused:
        fetch(f"https://{host}:{listener.port}/w.safetensors", SHA, tmp_path / "cache", size=7)
    assert listener.connections() == 0
    assert "127.0.0.1" not in str(refused.value).replace(host, "")  # where a name led is not said
    assert not (tmp_path / "cache" / "sha256").exists() or not any((tmp_path / "cache" / "sha256").rglob("*"))


class _Redirect(BaseHTTPRequestHandler):
    """Every request is sent on to `target`, as an object store's or a CDN's first hop would."""

    target = ""

    def _send(self):
        self.send_response(302)
        self.send_header("Location", self.target)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD = _send

    def log_message(self, *args):
        pass


def test_a_redirect_into_the_verifiers_network_is_refused(tmp_path, listener, monkeypatch):
    """The first hop passes (127.0.0.2 is taken as public here, standing in for a public host, and plain
    http is let in for the test) and answers 302 to the listener on 127.0.0.1: the redirect is followed by
    the connection check, so the listener is never reached."""
    handler = type("Redirect", (_Redirect,), {"target": f"http://127.0.0.1:{listener.port}/w.safetensors"})
    server = ThreadingHTTPServer(("127.0.0.2", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(storage, "FETCH_PROTOCOLS", storage.FETCH_PROTOCOLS | {"http"})
    monkeypatch.setattr(public_http, "SCHEMES", frozenset({"http"}))
    real = public_http.is_public
    monkeypatch.setattr(public_http, "is_public", lambda address: address == "127.0.0.2" or real(address))
    try:
        url = f"http://127.0.0.2:{server.server_address[1]}/w.safetensors"
        with pytest.raises(StorageError, match="not on the public internet"):
            fetch(url, SHA, tmp_path / "cache", size=7)
        assert listener.connections() == 0
        # The same redirect with every address let through does reach the listener: the check above is
        # what kept it away.
        monkeypatch.setattr(public_http, "is_public", lambda address: True)
        with pytest.raises(StorageError):
            fetch(url, SHA, tmp_path / "cache2", size=7)
        assert listener.connections(at_least=1) >= 1
    finally:
        server.shutdown()
        server.server_close()


def test_a_redirect_to_another_scheme_is_refused_at_its_hop(tmp_path, listener, monkeypatch):
    """Every hop of a redirect goes through the scheme check, as the first request does: the first hop is
    let in (plain http, for the test), the redirect to https is not, so a redirect from https to plain http
    (which would send the request in clear text) is refused the same way."""
    handler = type("Redirect", (_Redirect,), {"target": f"https://127.0.0.2:{listener.port}/w.safetensors"})
    server = ThreadingHTTPServer(("127.0.0.2", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(storage, "FETCH_PROTOCOLS", storage.FETCH_PROTOCOLS | {"http"})
    monkeypatch.setattr(public_http, "SCHEMES", frozenset({"http"}))
    monkeypatch.setattr(public_http, "is_public", lambda address: address == "127.0.0.2")
    try:
        with pytest.raises(StorageError, match="is not https: a hop to https://"):
            fetch(f"http://127.0.0.2:{server.server_address[1]}/w.safetensors", SHA, tmp_path / "cache", size=7)
    finally:
        server.shutdown()
        server.server_close()
