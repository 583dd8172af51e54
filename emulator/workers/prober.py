"""The probe engine: every probe of a verify run, from every test host of the lab, in one process.

stdin: {"timeout": S, "retries": N, "retry_wait": S,  # retries: rounds that resend what got no answer
        "mtu": [{"id", "ns", "src", "dst", "port", "max", "mss", "after": probe id}],  # path MTU searches, once
                                                    # that probe (a small echo on the same path) was answered
        "hosts": [{"ns", "address", "router", "ports": [int]}],  # every host a probe leaves from or goes to
        "probes": [{"id", "ns", "proto": icmp|tcp|udp, "src", "dst", "port", "nonce": hex}]}
stdout: {"answered": [id], "refused": {id: why}, "attempts": {id: n}, "drops": {ns: n}, "unresolved": [ns],
         "mtu": {id: {"mtu", "silent", "why", "mss"}},
         "seconds": {phase: s}}   # attempts: the sends it took, for every probe sent more than once

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

The path MTU of every tunnel is searched at once, with ICMP echoes with DF set: the largest that
comes back (the echo crosses both ways). The link's MTU is tried first, then the size an ICMP
"fragmentation needed" names (a gateway that knows), else bisection; a size that gets nothing at all
is a black hole. Before that, one SYN carrying the MSS a host on a 1500-byte link offers (sent in
the request) shows what a TCP handshake's MSS becomes across the tunnel (a gateway's clamp lowers it).
"""

from __future__ import annotations

import json
import selectors
import socket
import struct
import sys
import time
from dataclasses import dataclass, field

from netns import nsfs
from netns.spawn import open_files_to_hard_limit
from scapy.config import conf
from scapy.layers.inet import ICMP, IP, TCP, UDP, ICMPerror, IPerror, TCPerror, UDPerror
from scapy.packet import Raw

SO_RXQ_OVFL = 40  # Linux socket options Python does not name
SO_RCVBUFFORCE = 33
BUFFER = 8 * 1024 * 1024
BATCH = 200  # probes sent between two polls of every socket
MTU_WAIT = 0.25  # s per bisection round for a size that gets no answer (inside the lab, answers take ms)
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

    nsfs.inside(host.ns, make)
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


@dataclass
class Search:
    """One tunnel's path MTU bisection: lo crosses, hi+1 does not."""

    id: str
    host: Host
    src: str
    dst: str
    lo: int
    hi: int
    ident: int
    size: int = 0  # the size in flight
    outcome: str = ""  # for the size in flight: "" (none yet), "crossed", "too big"
    tries: int = 0
    silent: bool = False  # a larger size vanished without an ICMP error: a black hole
    why: str = ""  # who said a size was too big
    told: bool = False  # an ICMP error named the MTU: try that size next instead of bisecting
    mss: int | None = None  # the MSS option of the SYN-ACK that came back
    syn: bytes = b""  # the MSS probe


def _mss_option(p) -> int | None:
    return next((v for k, v in p[TCP].options if k == "MSS"), None)


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
        self.attempts: dict[str, int] = {}
        self.searches: dict[tuple, Search] = {}  # (namespace, proto, peer, ident) -> the search its probes belong to

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
        if self.searches and self.match_search(host, proto, p):
            return
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

    def match_search(self, host: Host, proto: str, p) -> bool:
        """An answer to a path MTU probe: the echo of the size in flight, an ICMP error quoting it, or
        the SYN-ACK of the MSS probe."""
        if proto == "tcp" and TCP in p:
            search = self.searches.get((host.ns, "tcp", p.src, p[TCP].dport))
            if search is None:
                return False
            if p[TCP].flags.S and p[TCP].flags.A:
                search.mss = _mss_option(p)
            return True
        if proto != "icmp" or ICMP not in p:
            return False
        if p[ICMP].type == 0:
            search = self.searches.get((host.ns, "icmp", p.src, p[ICMP].id))
            if search and p[ICMP].seq == search.size and len(p) == search.size:
                search.outcome = search.outcome or "crossed"
            return search is not None
        key = _quoted_key(p)
        search = self.searches.get((host.ns, *key)) if key else None
        if search and p[ICMP].type == 3 and p[ICMP].code == 4 and p[IPerror].len == search.size:
            search.outcome = "too big"
            who = "the sending host itself, which learned it before" if p.src == search.src else p.src
            search.why = f"ICMP fragmentation needed from {who} (mtu {p[ICMP].nexthopmtu})"
            if 0 < p[ICMP].nexthopmtu < search.size:
                search.hi, search.told = min(search.hi, p[ICMP].nexthopmtu), True
        return search is not None

    def path_mtu(self, specs: list[dict], retries: int, retry_wait: float) -> dict:
        """Search every tunnel's path MTU at once: the link's MTU first, then the MTU an ICMP error
        names, else bisection (a clean path takes two or three echoes). A size without any answer is
        resent `retries` times (loss) before it counts as lost in a black hole. The MSS probes go
        first, resent likewise."""
        searches = []
        for spec in specs:
            if spec["after"] not in self.answered:
                continue  # the tunnel does not carry even a small echo: no MTU to search
            host = self.hosts[spec["ns"]]
            host.next_ident += 1
            x = Search(spec["id"], host, spec["src"], spec["dst"], 68, spec["max"], host.next_ident & 0xFFFF)
            x.syn = bytes(IP(src=x.src, dst=x.dst) / TCP(sport=host.next_ident, dport=spec["port"], flags="S",
                                                         options=[("MSS", spec["mss"])]))
            self.searches[(host.ns, "icmp", x.dst, x.ident)] = x
            self.searches[(host.ns, "tcp", x.dst, host.next_ident)] = x
            searches.append(x)
        # the handshakes first: the search's own ICMP errors teach hosts a path MTU, and a host that
        # learned one advertises a smaller MSS, which is not what a first connection gets
        for _ in range(1 + retries):
            asking = [x for x in searches if x.mss is None]
            if not asking:
                break
            for x in asking:
                self._send(x.host, x.syn, x.dst)
            self.serve(time.monotonic() + MTU_WAIT, lambda: all(x.mss for x in asking))
        for _ in range(32 * (1 + retries)):  # 32: more than any bisection of 68..9000 needs
            bisecting = [x for x in searches if x.lo < x.hi]
            if not bisecting:
                break
            for x in bisecting:
                if x.outcome or not x.size:  # first the largest size, and the size an ICMP error named
                    size = x.hi if not x.size or x.told else (x.lo + x.hi + 1) // 2
                    x.size, x.outcome, x.tries, x.told = size, "", 0, False
                x.tries += 1
                self._send_sized(x)
            first = all(x.tries == 1 for x in bisecting)
            self.serve(time.monotonic() + (MTU_WAIT if first else retry_wait),
                       lambda: all(x.outcome for x in bisecting))
            for x in bisecting:
                if x.outcome == "crossed":
                    x.lo = x.size
                elif x.outcome == "too big":
                    x.hi = min(x.hi, x.size - 1)
                elif x.tries > retries:
                    x.hi, x.silent, x.outcome = x.size - 1, True, "lost"
        return {x.id: {"mtu": x.lo, "silent": x.silent, "why": x.why, "mss": x.mss} for x in searches}

    def _send_sized(self, x: Search) -> None:
        """An echo of exactly x.size bytes with DF set; one this host's own link cannot send is too big."""
        pad = x.size - 28
        data = bytes(IP(src=x.src, dst=x.dst, flags="DF") / ICMP(id=x.ident, seq=x.size) / Raw(b"\x00" * pad))
        try:
            x.host.send.sendto(data, (x.dst, 0))
        except OSError as exc:
            x.outcome, x.why = "too big", f"{x.src}'s own link ({exc.strerror})"

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

    def run(self, probes: list[dict], timeout: float, retries: int = 0, retry_wait: float = 0.5) -> None:
        """Reach probes first, then isolation probes in batches; between batches the responders answer
        and replies are matched, so no answer waits behind the rest of the burst. Then, on a lossy
        path, up to `retries` rounds resend every probe still without an answer or a refusal (the
        same packet: an answer to any copy proves the same thing)."""
        ordered = sorted(probes, key=lambda p: not p.get("expect_reply", True))
        packets = []
        for probe in ordered:
            host = self.hosts[probe["ns"]]
            data, key, check = build(host, probe)
            host.keys[key] = probe["id"]
            self.checks[probe["id"]] = check
            packets.append((probe, host, data))
        self._round(packets, timeout)
        for _ in range(retries):
            packets = [(p, h, d) for p, h, d in packets if p["id"] not in self.answered and p["id"] not in self.refused]
            if not packets:
                return
            for probe, _h, _d in packets:
                self.attempts[probe["id"]] = self.attempts.get(probe["id"], 1) + 1
            self._round(packets, retry_wait)

    def _round(self, packets: list[tuple[dict, Host, bytes]], wait: float) -> None:
        expect = {p["id"] for p, _h, _d in packets if p.get("expect_reply", True)}
        for i, (probe, host, data) in enumerate(packets):
            self._send(host, data, probe["dst"])
            if i % BATCH == BATCH - 1:
                self.poll()
        end = time.monotonic() + wait
        self.serve(end, lambda: False if len(expect) < len(packets) else expect <= self.answered)

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
    open_files_to_hard_limit()  # six sockets per host
    marks = [time.monotonic()]
    engine = Engine(request)
    marks.append(time.monotonic())
    unresolved = engine.warm_up()
    marks.append(time.monotonic())
    engine.run(request["probes"], request["timeout"], request.get("retries", 0), request.get("retry_wait", 0.5))
    marks.append(time.monotonic())
    mtu = engine.path_mtu(request.get("mtu", []), request.get("retries", 0), request.get("retry_wait", 0.5))
    marks.append(time.monotonic())
    phases = dict(zip(("open", "warm_up", "send_and_wait", "path_mtu"),
                      (round(b - a, 3) for a, b in zip(marks, marks[1:]))))
    json.dump({"answered": sorted(engine.answered), "refused": engine.refused, "attempts": engine.attempts, "mtu": mtu,
               "unresolved": unresolved,
               "drops": {h.ns: h.drops for h in engine.hosts.values() if h.drops}, "seconds": phases}, sys.stdout)
