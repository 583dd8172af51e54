"""`vnetlab verify`: prove with packets that the running lab does what the plan says, and no more.

Checks derived from the plan and the connection states:
- reach: for every pair of networks the plan connects (both ends keyed, peer in the lab), in both
  directions, from a test host in every address space to a host in every address space on the
  other side: ICMP echo, a TCP handshake and a UDP exchange, each carrying a random nonce;
- isolation: every other pair of networks must not answer;
- esp: while probes run, the backbone carries only IKE and ESP, no lab address in clear, and no
  probe nonce in any payload;
- throughput (on request): iperf3 through each connected pair, and over a bare backbone veth.
One scapy worker per source namespace sends all of that namespace's probes at once.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from netns.registry import Registry

from .lab import WORKER_CWD, Lab
from .problems import EnvironmentProblem, UsageError
from .status import ConnectionStatus, collect, expected_up
from .topology import Host
from .workers.responder import PORT as RESPONDER_PORT

PROTOS = ("icmp", "tcp", "udp")


@dataclass(frozen=True)
class Check:
    kind: str  # reach | isolation | esp | throughput | test (the plan's own tests:)
    src: str
    dst: str
    ok: bool
    detail: str
    proto: str | None = None
    name: str | None = None  # a plan test's name
    mbps: float | None = None  # throughput: TCP goodput
    wire_mbps: float | None = None  # throughput: rate on the sending gateway's backbone link

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None or k in ("ok",)}


@dataclass(frozen=True)
class Probe:
    id: str
    proto: str
    src: Host
    dst: Host  # for a plan test to an address outside the lab's hosts: netns is ""
    expect_reply: bool
    cause: str  # what to blame when a reach probe fails
    port: int = RESPONDER_PORT
    test: str | None = None  # the plan test this probe runs


@dataclass(frozen=True)
class Pair:
    a: str  # network names: a VNet, or an on-premises site
    b: str
    intended: bool  # both ends keyed and connected, the peer in the lab: this should work
    cause: str  # the connection's state and reason, when not Connected


def network_pairs(lab: Lab, statuses: list[ConnectionStatus]) -> list[Pair]:
    """Every unordered pair of networks, and whether the plan connects it. Pure."""
    state = {(s.gateway, s.local_site): s for s in statuses}
    wanted = expected_up(lab)
    networks = list(dict.fromkeys(h.owner for h in lab.topology.hosts))
    links: dict[frozenset, Pair] = {}
    for gw in lab.topology.gateways:
        if gw.kind != "vnet":
            continue
        for t in gw.tunnels:
            site = lab.plan.site(t.local_site)
            peer_vnet = lab.plan.vnet_of_site(site)
            other = peer_vnet.name if peer_vnet else site.name
            peer_gw, peer_end = lab.topology.peer_gateway(t), lab.topology.peer_end(t)
            sides = [(gw.name, t.local_site)] + ([(peer_gw.name, peer_end.local_site)] if peer_end else [])
            intended = bool(t.peer_in_lab and peer_end and all(side in wanted for side in sides))
            ends = [state[side] for side in sides]
            down = [s for s in ends if s.connectivity_state != "Connected"]
            cause = (f"connection {down[0].gateway} -> {down[0].local_site} is {down[0].connectivity_state}: "
                     f"{down[0].reason}") if down else ""
            key = frozenset((gw.name, other))
            if key not in links or intended:
                links[key] = Pair(gw.name, other, intended, cause)
    pairs = []
    for i, a in enumerate(networks):
        for b in networks[i + 1:]:
            pairs.append(links.get(frozenset((a, b)), Pair(a, b, False, "")))
    return pairs


def _hosts_by_space(lab: Lab, network: str) -> list[Host]:
    """One host per address space of a network (the first whose subnet lies in it)."""
    hosts = [h for h in lab.topology.hosts if h.owner == network]
    spaces = (lab.plan.vnet(network).address_space if network in {v.name for v in lab.plan.vnets}
              else lab.plan.site(network).address_space)
    chosen = []
    for space in spaces:
        inside = [h for h in hosts if h.network.subnet_of(space)]
        if inside:
            chosen.append(inside[0])
    return chosen


def plan_probes(lab: Lab, pairs: list[Pair]) -> list[Probe]:
    probes = []
    for pair in pairs:
        for a, b in ((pair.a, pair.b), (pair.b, pair.a)):
            srcs, dsts = _hosts_by_space(lab, a), _hosts_by_space(lab, b)
            if not pair.intended:  # isolation: one host each way is enough to show a leak
                srcs, dsts = srcs[:1], dsts[:1]
            for src in srcs:
                for dst in dsts:
                    for proto in PROTOS:
                        probes.append(Probe(f"p{len(probes)}", proto, src, dst, pair.intended, pair.cause))
    return probes


def user_probes(lab: Lab, start: int) -> list[Probe]:
    """The plan's own tests: as probes, numbered after the derived ones."""
    hosts = {h.node: h for h in lab.topology.hosts}
    by_address = {str(h.address): h for h in lab.topology.hosts}
    probes = []
    for test in lab.plan.tests:
        dst = hosts.get(test.dst) or by_address.get(test.dst) or Host(
            test.dst, "", "", IPv4Address(test.dst), IPv4Network(f"{test.dst}/32"))
        probes.append(Probe(f"p{start + len(probes)}", test.proto, hosts[test.src], dst, test.expect == "reach",
                            "", test.port or RESPONDER_PORT, test.name))
    return probes


def _python_in(ns: str, module: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, sys.executable, "-m", module, *args]


class _Workers:
    """Worker processes started for one verify run; journalled in the lab's registry, so
    `down` removes them even if verify is killed, and stopped by pid when verify ends."""

    def __init__(self, lab: Lab):
        self.registry = Registry(lab.directory)
        self.procs: list[subprocess.Popen] = []

    def start(self, argv: list[str], what: str, stdin: bool = True) -> subprocess.Popen:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=WORKER_CWD)
        self.registry.adopt_process(proc.pid, what)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_ready(proc: subprocess.Popen, what: str) -> None:
    line = proc.stdout.readline()
    if line.strip() != "ready":
        raise EnvironmentProblem(f"{what} did not start: {line.strip()} {proc.stderr.read()[-500:]}")


def run_probes(lab: Lab, probes: list[Probe], pcap_dir: Path | None, timeout: float) -> tuple[set[str], dict]:
    """Send every probe, capturing the backbone meanwhile: (answered probe ids, capture verdict)."""
    workers = _Workers(lab)
    try:
        links = [f"{v.if_a}={gw.name}={v.addr_b.ip}" for gw in lab.topology.gateways for v in lab.topology.veths
                 if v.ns_a == lab.topology.backbone and v.ns_b == gw.netns]
        capture = workers.start(_python_in(lab.topology.backbone, "emulator.workers.capture", *links),
                                "backbone capture")
        ports: dict[str, set[int]] = defaultdict(set)
        for p in probes:
            if p.dst.netns:
                ports[p.dst.netns].add(p.port)
        responders = [workers.start(_python_in(ns, "emulator.workers.responder", *map(str, sorted(ports[ns]))),
                                    f"responder {ns}", stdin=False) for ns in sorted(ports)]
        _wait_ready(capture, "the backbone capture")
        for proc in responders:
            _wait_ready(proc, "a probe responder")
        by_src: dict[str, list[Probe]] = defaultdict(list)
        for p in probes:
            by_src[p.src.netns].append(p)

        def send(ns: str) -> list[str]:
            req = {"timeout": timeout, "iface": "eth0", "probes": [
                {"id": p.id, "proto": p.proto, "src": str(p.src.address), "dst": str(p.dst.address),
                 "port": p.port, "nonce": nonces[p.id]} for p in by_src[ns]]}
            proc = workers.start(_python_in(ns, "emulator.workers.prober"), f"prober {ns}")
            out, err = proc.communicate(json.dumps(req), timeout=timeout + 30)
            if proc.returncode != 0:
                raise EnvironmentProblem(f"probe worker in {ns} failed: {err[-500:]}")
            return json.loads(out)["answered"]

        nonces = {p.id: secrets.token_hex(16) for p in probes}
        with ThreadPoolExecutor(max_workers=max(1, min(16, len(by_src)))) as pool:
            answered = {pid for ids in pool.map(send, by_src) for pid in ids}
        private = sorted({str(n) for v in lab.plan.vnets for n in v.address_space}
                         | {str(n) for s in lab.plan.local_sites for n in s.address_space})
        if pcap_dir is not None:
            try:
                pcap_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UsageError(f"--pcap {pcap_dir}: cannot create: {exc.strerror or exc}") from None
        out, err = capture.communicate(json.dumps({"nonces": list(nonces.values()), "private": private,
                                                   "pcap_dir": str(pcap_dir.resolve()) if pcap_dir else None}) + "\n",
                                       timeout=60)
        if capture.returncode != 0:
            raise EnvironmentProblem(f"backbone capture failed: {err[-500:]}")
        return answered, json.loads(out)
    finally:
        workers.stop_all()


def esp_check(verdict: dict, probes_answered: int) -> Check:
    counts = verdict["counts"]
    esp, ike = counts.get("esp", 0), counts.get("ike", 0)
    problems = []
    if verdict["violation_count"]:
        problems.append(f"{verdict['violation_count']} packet(s) in clear, e.g. {verdict['violations'][0]}")
    if verdict["nonce_leak_count"]:
        problems.append(f"probe nonce seen in {verdict['nonce_leak_count']} backbone payload(s), e.g. "
                        f"{verdict['nonce_leaks'][0]}")
    if probes_answered and not esp:
        problems.append("probes crossed, but no ESP packet was seen on the backbone")
    detail = (f"{esp} ESP packets ({verdict['esp_bytes']} bytes) and {ike} IKE packets on the backbone; "
              + ("; ".join(problems) if problems else "no clear-text lab traffic, no nonce in any payload"))
    return Check("esp", "backbone", "backbone", not problems, detail)


def verify(lab: Lab, pcap_dir: Path | None = None, timeout: float = 1.5, throughput: bool = False,
           duration: float = 3.0) -> list[Check]:
    statuses = collect(lab)
    pairs = network_pairs(lab, statuses)
    derived = plan_probes(lab, pairs)
    probes = derived + user_probes(lab, len(derived))
    answered, verdict = run_probes(lab, probes, pcap_dir, timeout)
    checks = []
    for p in probes:
        got = p.id in answered
        src = f"{p.src.node} ({p.src.address})"
        dst = f"{p.dst.node} ({p.dst.address})" if p.dst.netns else str(p.dst.address)
        if p.test is not None:
            expected = "reach" if p.expect_reply else "blocked"
            seen = "answered" if got else "no answer"
            checks.append(Check("test", src, dst, got == p.expect_reply,
                                f"{p.test}: expected {expected}, {seen}" + (f" on port {p.port}" if p.proto != "icmp"
                                                                             else ""), p.proto, name=p.test))
        elif p.expect_reply:
            detail = "answered, nonce returned" if got else (
                f"no answer: {p.cause}" if p.cause else "no answer although the connection is Connected "
                "(fail-closed drop or no route)")
            checks.append(Check("reach", src, dst, got, detail, p.proto))
        else:
            detail = ("answered although the plan does not connect these networks: leak or transit"
                      if got else "no answer, as the plan says")
            checks.append(Check("isolation", src, dst, not got, detail, p.proto))
    checks.append(esp_check(verdict, len(answered)))
    if throughput:
        checks.extend(throughput_checks(lab, pairs, statuses, duration))
    return checks


def throughput_checks(lab: Lab, pairs: list[Pair], statuses: list[ConnectionStatus], duration: float) -> list[Check]:
    from .throughput import Direction, MeasurementError, bare_backbone, judge, measure

    gateways = {g.name: g for g in lab.topology.gateways if g.kind == "vnet"}
    cipher = next((s.cipher for s in statuses if s.cipher), None)
    workers = _Workers(lab)
    checks: list[Check] = []
    try:
        try:
            bare = bare_backbone(lab, workers, duration)
        except MeasurementError as exc:
            bare = None
            checks.append(Check("throughput", "backbone", "gateway", False, str(exc), mbps=0.0))
        for pair in pairs:
            if not pair.intended or pair.cause:
                continue
            for a, b in ((pair.a, pair.b), (pair.b, pair.a)):
                d = Direction(_hosts_by_space(lab, a)[0], _hosts_by_space(lab, b)[0], gateways.get(a))
                label = (f"{d.src.node} ({d.src.address})", f"{d.dst.node} ({d.dst.address})")
                try:
                    rate = measure(lab, workers, d, duration)
                    ok, why = judge(lab, workers, d, rate, duration)
                except MeasurementError as exc:
                    checks.append(Check("throughput", *label, False, str(exc), mbps=0.0))
                    continue
                cost = f"; bare backbone veth {bare[1]:.0f} Mbit/s" if bare else ""
                checks.append(Check("throughput", *label, ok,
                                    f"{why}; {duration:g} s TCP, cipher {cipher or '?'}, {lab.dataplane}{cost}",
                                    mbps=round(rate.goodput, 1),
                                    wire_mbps=round(rate.wire, 1) if rate.wire is not None else None))
        if bare:
            checks.append(Check("throughput", bare[0].split(" -> ")[0], bare[0].split(" -> ")[1], bare[1] > 0,
                                "bare backbone veth, no IPsec, no cap: what the tunnel costs is measured against this",
                                mbps=round(bare[1], 1)))
    finally:
        workers.stop_all()
    return checks
