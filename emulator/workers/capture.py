"""Capture the backbone while probes run, then judge it: only IKE and ESP may cross.

argv: one IFACE=GATEWAY=ADDRESS per backbone link (the backbone's interface, the gateway at its
other end and that gateway's public address). Prints "ready" once sniffing. stdin then receives one JSON line
{"nonces": [hex, ...], "private": [cidr, ...], "pcap_dir": path|null}; the worker stops, checks
every packet and prints a JSON verdict. Each packet crosses two backbone links (in from one gateway,
out to another); it is counted once, on the link where it enters the backbone.

A capture that saw nothing would pass any "nothing in clear" test, so before it stops the worker
sends a canary (one UDP datagram with a random payload, from the backbone to each gateway's
address: inside the lab) and reports on which links it was seen; the canaries themselves, and
the ICMP errors quoting them, are not judged.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import sys
import threading
import time
from collections import defaultdict
from typing import Callable

from scapy.config import conf
from scapy.layers.inet import ICMP, IP, UDP, IPerror, UDPerror
from scapy.sendrecv import AsyncSniffer
from scapy.utils import wrpcap

IKE_PORTS = {500, 4500}
CANARY_PORT = 9  # discard
NONCE = 16  # bytes


def _fragment_of(ip) -> tuple:
    return ip.src, ip.dst, ip.proto, ip.id


def first_fragments(packets) -> dict[tuple, str]:
    """The class of every fragmented packet, from its first fragment (the only one with ports): a
    gateway whose path MTU is small fragments its ESP-in-UDP."""
    return {_fragment_of(pkt[IP]): classify(pkt) for pkt in packets
            if IP in pkt and pkt[IP].frag == 0 and pkt[IP].flags.MF}


def classify(pkt, fragments: dict[tuple, str] | None = None) -> str:
    """esp | ike | icmp-about-ike | other (IPv4) | l2 (ARP and the like, not IPv4). A later fragment
    is what its first fragment is (`fragments`, from first_fragments)."""
    if IP not in pkt:
        return "l2"
    ip = pkt[IP]
    if ip.frag:
        return (fragments or {}).get(_fragment_of(ip), "other")
    if ip.proto == 50:
        return "esp"
    if UDP in ip and (ip[UDP].sport in IKE_PORTS or ip[UDP].dport in IKE_PORTS):
        payload = bytes(ip[UDP].payload)
        if ip[UDP].dport == 4500 and len(payload) > 4 and payload[:4] != b"\0\0\0\0":
            return "esp"  # ESP in UDP (RFC 3948): no non-ESP marker
        return "ike"
    if ICMP in ip and IPerror in ip and (ip[IPerror].proto == 50 or (
            UDPerror in ip and (ip[UDPerror].sport in IKE_PORTS or ip[UDPerror].dport in IKE_PORTS))):
        return "icmp-about-ike"  # e.g. 'network unreachable' for an IKE packet to a dummy peer address
    return "other"


def inside_test(private: list[ipaddress.IPv4Network]) -> Callable[[str], bool]:
    """Whether an address is in one of the lab's private networks. A backbone carries few distinct
    addresses and a large lab has hundreds of networks: each address is tested once (the networks
    collapsed first), not each packet against every network (ring300's judge spent most of its time there)."""
    networks = list(ipaddress.collapse_addresses(private))
    known: dict[str, bool] = {}

    def inside(address: str) -> bool:
        if address not in known:
            ip = ipaddress.ip_address(address)
            known[address] = any(ip in n for n in networks)
        return known[address]
    return inside


def main() -> None:
    conf.verb = 0
    links = [arg.split("=", 2) for arg in sys.argv[1:]]
    ifaces = [iface for iface, _gw, _addr in links]
    entering = {iface: addr for iface, _gw, addr in links}
    started = threading.Event()
    sniffer = AsyncSniffer(iface=ifaces, store=True, started_callback=started.set)
    sniffer.start()
    started.wait(5)
    print("ready", flush=True)
    request = json.loads(sys.stdin.readline() or "{}")
    canary = os.urandom(NONCE)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _iface, _gw, addr in links:
            sock.sendto(canary, (addr, CANARY_PORT))
    time.sleep(0.2)
    packets = sniffer.stop() or []
    # every 16-byte window of a packet, looked up in a set: linear in the bytes captured, not
    # multiplied by the number of probes (a 100-VNet ring sends tens of thousands)
    nonce_set = {bytes.fromhex(n) for n in request.get("nonces", [])}
    inside = inside_test([ipaddress.ip_network(n) for n in request.get("private", [])])
    counts: dict[str, int] = defaultdict(int)
    esp_bytes = 0
    violations, leaks = [], []
    per_iface = defaultdict(list)
    canaries = set()
    fragments = first_fragments(packets)
    for pkt in packets:
        on = getattr(pkt, "sniffed_on", None) or "backbone"
        per_iface[on].append(pkt)
        raw = bytes(pkt)
        if canary in raw:
            canaries.add(on)
            continue
        kind = classify(pkt, fragments)
        if IP not in pkt or pkt[IP].src == entering.get(on):
            counts[kind] += 1
            if kind == "esp":
                esp_bytes += len(pkt[IP])
        if kind == "other" or (IP in pkt and (inside(pkt[IP].src) or inside(pkt[IP].dst))):
            violations.append(f"{getattr(pkt, 'sniffed_on', '?')}: {pkt.summary()}")
        if nonce_set and nonce_set.intersection(raw[i:i + NONCE] for i in range(len(raw) - NONCE + 1)):
            leaks.append(f"{getattr(pkt, 'sniffed_on', '?')}: {pkt.summary()}")
    pcaps = []
    if request.get("pcap_dir"):
        for iface, gateway, _addr in links:  # one file per gateway's backbone link, empty or not
            path = f"{request['pcap_dir']}/{gateway}.pcap"
            wrpcap(path, per_iface.get(iface, []), linktype=1)
            pcaps.append(path)
    json.dump({"packets": len(packets), "counts": dict(counts), "esp_bytes": esp_bytes,
               "violations": violations[:20], "violation_count": len(violations),
               "nonce_leaks": leaks[:20], "nonce_leak_count": len(leaks), "pcaps": pcaps,
               "blind_links": [gw for iface, gw, _addr in links if iface not in canaries]}, sys.stdout)
