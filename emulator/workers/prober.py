"""The probe engine: every probe of a verify run, from every test host of the lab, in one process.

stdin: {"timeout": S,
        "hosts": [{"ns", "address", "router", "ports": [int]}],  # every host a probe leaves from or goes to
        "probes": [{"id", "ns", "proto": icmp|tcp|udp, "src", "dst", "port", "nonce": hex}]}
stdout: {"answered": [id], "refused": {id: why}, "drops": {ns: n}, "unresolved": [ns], "seconds": {phase: s}}

Why one process: the earlier design ran one scapy sniffer per source namespace, and each sniffer
copied its own outgoing probes and tested every packet against every probe. At 100 VNets its socket
buffer overflowed (PACKET_STATISTICS showed 16-141 drops per source) and the replies that were lost
were the late reach probes. Here:
- sockets are opened *inside* each namespace (setns, then back) and keep working from one thread;
  none is opened in the host's own namespace;
- replies arrive on inbound-only raw sockets, one per protocol, with large buffers; the kernel's
  drop counter (SO_RXQ_OVFL) is reported, so a local drop can never pass for a failed path;
- each reply is matched by key (protocol, peer, identifier) in O(1), and its nonce checked;
- each host first resolves its router (one echo), so no burst waits in an unresolved neighbour queue;
- the responders (TCP handshakes, UDP echo on the probed ports) are sockets of the same loop, and
  ICMP echo is answered by each host's kernel.
A probe counts as answered only if the reply proves it saw the probe: the echo reply or UDP reply
carries the nonce back, the SYN-ACK acknowledges the nonce-derived sequence number. ICMP errors and
TCP resets that quote a probe say where it was refused.
"""

from __future__ import annotations

import json
import resource
import selectors
import socket
import struct
import sys
import time
from dataclasses import dataclass, field

from netns import ops
from scapy.config import conf
from scapy.layers.inet import ICMP, IP, TCP, UDP, ICMPerror, IPerror, TCPerror, UDPerror
from scapy.packet import Raw

SO_RXQ_OVFL = 40  # Linux socket options Python does not name
SO_RCVBUFFORCE = 33
BUFFER = 8 * 1024 * 1024
BATCH = 200  # probes sent between two polls of every socket
ICMP_REASONS = {(3, 0): "net unreachable", (3, 1): "host unreachable", (3, 3): "port unreachable",
                (3, 4): "fragmentation needed", (3, 13): "administratively prohibited", (11, 0): "TTL exceeded"}


@dataclass
class Host:
    """The sockets of one namespace: raw send, inbound raw receive per protocol, responders."""

    ns: str
    address: str
    router: str | None
    send: socket.socket | None = None
    receive: dict[str, socket.socket] = field(default_factory=dict)
    drops: int = 0
    keys: dict[tuple, str] = field(default_factory=dict)  # (proto, peer, ident) -> probe id
    templates: dict[tuple, tuple] = field(default_factory=dict)  # (proto, nonce) -> (bytes, ident, check)
    next_ident: int = 20000


def open_host(spec: dict, sel: selectors.BaseSelector) -> Host:
    host = Host(spec["ns"], spec["address"], spec.get("router"))

    def make() -> None:
        host.send = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        for name, proto in (("icmp", socket.IPPROTO_ICMP), ("tcp", socket.IPPROTO_TCP), ("udp", socket.IPPROTO_UDP)):
            s = socket.socket(socket.AF_INET, socket.SOCK_RAW, proto)
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, BUFFER)
            s.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
            s.setblocking(False)
            host.receive[name] = s
            sel.register(s, selectors.EVENT_READ, ("raw", host, name))
        for port in spec.get("ports", []):
            t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            t.bind(("0.0.0.0", port))
            t.listen(1024)
            t.setblocking(False)
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u.bind(("0.0.0.0", port))
            u.setblocking(False)
            sel.register(t, selectors.EVENT_READ, ("accept", host, port))
            sel.register(u, selectors.EVENT_READ, ("echo", host, port))

    ops.inside(host.ns, make)
    return host


def build(host: Host, probe: dict) -> tuple[bytes, tuple, object]:
    """(packet bytes, key of the reply, check on the reply's scapy packet).

    scapy needs about a millisecond per packet here, and a 300-VNet ring sends 90,000 isolation
    probes: the ICMP probes of one host that share a nonce are built once, and each copy gets its
    own destination. Nothing else changes: the ICMP checksum does not cover the IP header, and the
    kernel fills in the IP header checksum of every raw IP_HDRINCL packet."""
    nonce = bytes.fromhex(probe["nonce"])
    src, dst, proto = probe["src"], probe["dst"], probe["proto"]
    template = host.templates.get((proto, nonce)) if proto == "icmp" else None
    if template is not None:
        data, ident, check = template
        return data[:16] + socket.inet_aton(dst) + data[20:], ("icmp", dst, ident), check
    host.next_ident += 1
    ident = host.next_ident
    if proto == "icmp":
        data = bytes(IP(src=src, dst=dst) / ICMP(id=ident & 0xFFFF, seq=1) / Raw(nonce))
        host.templates[(proto, nonce)] = (data, ident & 0xFFFF, lambda p: bytes(p[ICMP].payload) == nonce)
        return data, ("icmp", dst, ident & 0xFFFF), host.templates[(proto, nonce)][2]
    if proto == "udp":
        pkt = IP(src=src, dst=dst) / UDP(sport=ident, dport=probe["port"]) / Raw(nonce)
        return bytes(pkt), ("udp", dst, ident), lambda p: bytes(p[UDP].payload) == nonce
    isn = int.from_bytes(nonce[:4], "big")
    pkt = IP(src=src, dst=dst) / TCP(sport=ident, dport=probe["port"], flags="S", seq=isn) / Raw(nonce)
    # the kernel acknowledges the SYN, not the data it carried (no TCP Fast Open)
    return bytes(pkt), ("tcp", dst, ident), lambda p: p[TCP].flags.S and p[TCP].flags.A and \
        p[TCP].ack == (isn + 1) % 2**32


def _quoted_key(p) -> tuple | None:
    """The key of the probe an ICMP error quotes."""
    if IPerror not in p:
        return None
    inner = p[IPerror]
    if ICMPerror in p:
        return ("icmp", inner.dst, p[ICMPerror].id)
    if UDPerror in p:
        return ("udp", inner.dst, p[UDPerror].sport)
    if TCPerror in p:
        return ("tcp", inner.dst, p[TCPerror].sport)
    return None


class Engine:
    def __init__(self, request: dict):
        self.sel = selectors.DefaultSelector()
        self.hosts = {spec["ns"]: open_host(spec, self.sel) for spec in request["hosts"]}
        self.checks: dict[str, object] = {}
        self.answered: set[str] = set()
        self.refused: dict[str, str] = {}
        self.warm: set[str] = set()

    def receive(self, host: Host, proto: str, sock: socket.socket) -> None:
        while True:
            try:
                data, anc, _flags, _addr = sock.recvmsg(65535, socket.CMSG_SPACE(4))
            except BlockingIOError:
                return
            for level, kind, value in anc:
                if level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL:
                    host.drops = max(host.drops, struct.unpack("I", value[:4])[0])
            self.match(host, proto, IP(data))

    def match(self, host: Host, proto: str, p) -> None:
        if proto == "icmp" and ICMP in p and p[ICMP].type == 0:
            if p[ICMP].id == 0xFFFF and p.src == host.router:
                self.warm.add(host.ns)
                return
            pid = host.keys.get(("icmp", p.src, p[ICMP].id))
            if pid and self.checks[pid](p):
                self.answered.add(pid)
        elif proto == "icmp" and ICMP in p:
            key = _quoted_key(p)
            pid = host.keys.get(key) if key else None
            if pid:
                why = ICMP_REASONS.get((p[ICMP].type, p[ICMP].code), f"ICMP type {p[ICMP].type} code {p[ICMP].code}")
                self.refused.setdefault(pid, f"{why} from {p.src}")
        elif proto in ("udp", "tcp") and (UDP if proto == "udp" else TCP) in p:
            layer = p[UDP] if proto == "udp" else p[TCP]
            pid = host.keys.get((proto, p.src, layer.dport))
            if pid is None:
                return
            if self.checks[pid](p):
                self.answered.add(pid)
            elif proto == "tcp" and p[TCP].flags.R:
                self.refused.setdefault(pid, f"TCP reset from {p.src} (nothing listens on port {layer.sport})")

    def serve(self, until: float, done) -> None:
        """Answer and match until the deadline, or until done(); at least one poll of every socket."""
        while True:
            self.poll(max(0.0, min(0.05, until - time.monotonic())))
            if time.monotonic() >= until or done():
                return

    def poll(self, timeout: float = 0.0) -> None:
        for key, _ in self.sel.select(timeout=timeout):
            what, host, arg = key.data
            if what == "raw":
                self.receive(host, arg, key.fileobj)
            elif what == "accept":
                try:
                    conn, _ = key.fileobj.accept()
                    conn.close()
                except BlockingIOError:
                    pass
            else:
                try:
                    data, peer = key.fileobj.recvfrom(2048)
                    key.fileobj.sendto(data, peer)
                except BlockingIOError:
                    pass

    def warm_up(self) -> list[str]:
        """One echo from each host to its router resolves the neighbour entries on both sides."""
        for host in self.hosts.values():
            if host.router:
                echo = IP(src=host.address, dst=host.router) / ICMP(id=0xFFFF, seq=1)
                host.send.sendto(bytes(echo), (host.router, 0))
        wanted = {h.ns for h in self.hosts.values() if h.router}
        self.serve(time.monotonic() + 2.0, lambda: wanted <= self.warm)
        return sorted(wanted - self.warm)

    def run(self, probes: list[dict], timeout: float) -> None:
        """Reach probes first, then isolation probes in batches; between batches the responders answer
        and replies are matched, so no answer waits behind the rest of the burst."""
        expect = {p["id"] for p in probes if p.get("expect_reply", True)}
        ordered = sorted(probes, key=lambda p: not p.get("expect_reply", True))
        for i, probe in enumerate(ordered):
            host = self.hosts[probe["ns"]]
            data, key, check = build(host, probe)
            host.keys[key] = probe["id"]
            self.checks[probe["id"]] = check
            self._send(host, data, probe["dst"])
            if i % BATCH == BATCH - 1:
                self.poll()
        end = time.monotonic() + timeout
        self.serve(end, lambda: False if len(expect) < len(probes) else expect <= self.answered)

    def _send(self, host: Host, data: bytes, dst: str) -> None:
        for _ in range(200):
            try:
                host.send.sendto(data, (dst, 0))
                return
            except (BlockingIOError, OSError) as exc:
                if getattr(exc, "errno", None) not in (11, 105):  # EAGAIN, ENOBUFS: the queue is full, wait
                    return  # e.g. ENETUNREACH: the host has no route; the probe simply gets no answer
                self.poll(0.005)


def main() -> None:
    conf.verb = 0
    request = json.load(sys.stdin)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # six sockets per host
    marks = [time.monotonic()]
    engine = Engine(request)
    marks.append(time.monotonic())
    unresolved = engine.warm_up()
    marks.append(time.monotonic())
    engine.run(request["probes"], request["timeout"])
    marks.append(time.monotonic())
    phases = dict(zip(("open", "warm_up", "send_and_wait"), (round(b - a, 3) for a, b in zip(marks, marks[1:]))))
    json.dump({"answered": sorted(engine.answered), "refused": engine.refused, "unresolved": unresolved,
               "drops": {h.ns: h.drops for h in engine.hosts.values() if h.drops}, "seconds": phases}, sys.stdout)


if __name__ == "__main__":
    main()
