"""The network. TCP, UDP and raw sockets worked from the method: it could send what it read (validation
inputs reached by other means, or its environment) to a listener on the machine or beyond. `target` is
"PORT" of a TCP and a UDP listener the test opened on the host's 127.0.0.1. Every attempt is reported,
then it trains."""

import socket

from tests.trust.methods.common import attempt, train_and_snapshot


def main(ctx):
    port = int(ctx.hparams["target"])

    def tcp():
        with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
            s.sendall(b"exfiltrated")

    def udp():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"exfiltrated", ("127.0.0.1", port))

    def raw():
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()

    def packet():
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW).close()

    def outside():
        socket.create_connection(("1.1.1.1", 53), timeout=3).close()

    tried = {"tcp": attempt(tcp), "udp": attempt(udp), "raw": attempt(raw), "packet": attempt(packet),
             "outside": attempt(outside), "interfaces": ",".join(n for _, n in socket.if_nameindex())}
    ctx.log(**tried)
    train_and_snapshot(ctx)
