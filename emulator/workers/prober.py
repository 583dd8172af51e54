"""Send a batch of probes from this namespace with scapy and report which were answered.

stdin: {"timeout": S, "probes": [{"id", "proto": icmp|tcp|udp, "src", "dst", "port", "nonce": hex}]}
stdout: {"answered": [id, ...]}
A probe counts as answered only if the reply proves it saw the probe: the ICMP echo reply or
the UDP reply carries the nonce back, the SYN-ACK acknowledges the nonce-derived sequence number.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time

from scapy.config import conf
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.packet import Raw
from scapy.sendrecv import AsyncSniffer
from scapy.supersocket import L3RawSocket

from emulator.workers.responder import PORT as RESPONDER_PORT


def build(probe: dict) -> tuple[object, object]:
    """(packet, predicate on a received packet that recognises the reply)."""
    nonce = bytes.fromhex(probe["nonce"])
    src, dst = probe["src"], probe["dst"]
    if probe["proto"] == "icmp":
        ident = random.randrange(1, 0xFFFF)
        pkt = IP(src=src, dst=dst) / ICMP(id=ident, seq=1) / Raw(nonce)

        def match(p):
            return (ICMP in p and p[IP].src == dst and p[ICMP].type == 0 and p[ICMP].id == ident
                    and bytes(p[ICMP].payload) == nonce)
    elif probe["proto"] == "udp":
        sport = random.randrange(20000, 60000)
        pkt = IP(src=src, dst=dst) / UDP(sport=sport, dport=probe.get("port", RESPONDER_PORT)) / Raw(nonce)

        def match(p):
            return UDP in p and p[IP].src == dst and p[UDP].dport == sport and bytes(p[UDP].payload) == nonce
    else:
        sport = random.randrange(20000, 60000)
        isn = int.from_bytes(nonce[:4], "big")
        pkt = IP(src=src, dst=dst) / TCP(sport=sport, dport=probe.get("port", RESPONDER_PORT), flags="S", seq=isn) / Raw(nonce)

        def match(p):  # the kernel acknowledges the SYN, not the data it carried (no TCP Fast Open)
            return (TCP in p and p[IP].src == dst and p[TCP].dport == sport and p[TCP].flags.S
                    and p[TCP].flags.A and p[TCP].ack == (isn + 1) % 2**32)
    return pkt, match


def main() -> None:
    request = json.load(sys.stdin)
    probes = request["probes"]
    built = {p["id"]: build(p) for p in probes}
    answered: set[str] = set()

    def on_packet(p) -> None:
        for pid, (_pkt, match) in built.items():
            if pid not in answered and match(p):
                answered.add(pid)

    started = threading.Event()
    sniffer = AsyncSniffer(prn=on_packet, store=False, iface=request.get("iface"), started_callback=started.set)
    sniffer.start()
    started.wait(5)
    sock = L3RawSocket()
    try:
        for pkt, _ in built.values():
            sock.send(pkt)
        deadline = time.monotonic() + request["timeout"]
        while len(answered) < len(built) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        sock.close()
        sniffer.stop()
    json.dump({"answered": sorted(answered)}, sys.stdout)


if __name__ == "__main__":
    conf.verb = 0
    main()
