"""Probe responder for one test host: accepts TCP handshakes and echoes UDP datagrams on PORT.
(ICMP echo is answered by the kernel.) Runs until killed. No scapy: it must start fast."""

from __future__ import annotations

import selectors
import socket
import sys

PORT = 7777


def main() -> None:
    sel = selectors.DefaultSelector()
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("0.0.0.0", PORT))
    tcp.listen(128)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", PORT))
    sel.register(tcp, selectors.EVENT_READ)
    sel.register(udp, selectors.EVENT_READ)
    print("ready", flush=True)
    sys.stdout.close()
    while True:
        for key, _ in sel.select():
            if key.fileobj is tcp:
                conn, _ = tcp.accept()
                conn.close()
            else:
                data, peer = udp.recvfrom(2048)
                udp.sendto(data, peer)


if __name__ == "__main__":
    main()
