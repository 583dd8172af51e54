"""Probe responder for one test host: accepts TCP handshakes and echoes UDP datagrams on PORT and
on the ports given as arguments (the plan's own tests name them). ICMP echo is answered by the
kernel. Runs until killed. No scapy: it must start fast."""

from __future__ import annotations

import selectors
import socket
import sys

PORT = 7777


def main() -> None:
    sel = selectors.DefaultSelector()
    tcp, udp = set(), set()
    for port in sorted({PORT, *map(int, sys.argv[1:])}):
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        t.bind(("0.0.0.0", port))
        t.listen(128)
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("0.0.0.0", port))
        for s in (t, u):
            sel.register(s, selectors.EVENT_READ)
        tcp.add(t)
        udp.add(u)
    print("ready", flush=True)
    sys.stdout.close()
    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            if sock in tcp:
                conn, _ = sock.accept()
                conn.close()
            else:
                data, peer = sock.recvfrom(2048)
                sock.sendto(data, peer)


if __name__ == "__main__":
    main()
