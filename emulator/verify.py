"""`vnetlab verify`: prove with packets that the running lab does what the plan says, and no more.

Checks derived from the plan and the connection states:
- reach: for every pair of networks the plan connects (both ends keyed, peer in the lab), in both
  directions, from a test host in every address space to a host in every address space on the
  other side: ICMP echo, a TCP handshake and a UDP exchange, each carrying a random nonce;
- isolation: every other pair of networks must not answer (one check per source host, covering
  every network it must not reach);
- mtu: per connected pair and direction, the path MTU through the tunnel (the largest packet that
  crosses both ways, with DF set), whether larger packets get an ICMP error or vanish (a black
  hole), and the MSS a TCP handshake ends up with across the tunnel; a black hole that full-size
  TCP segments fall into fails;
- esp: while probes run, the backbone carries only IKE and ESP, no lab address in clear, and no
  probe nonce in any payload;
- throughput (on request): iperf3 through each connected pair, and over a bare backbone veth.
- the plan's own `tests:`.
One probe engine process (workers/prober.py) sends every probe of the lab and answers them.
"""

from __future__ import annotations

import json
import math
import secrets
import subprocess
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from netns.registry import Registry
from netns.spawn import end_with_parent, wait_for_word

from .capture import key_tables
from .keytables import write_tables
from .lab import Lab
from .model import UserCheck
from .problems import EnvironmentProblem, UsageError
from .status import ConnectionStatus, collect, expected_up
from .topology import Host
from .workers import CWD as WORKER_CWD, command as worker_command

PROTOS = ("icmp", "tcp", "udp")
RESPONDER_PORT = 7777  # where every test host answers the derived TCP and UDP probes
MAX_RETRIES = 9
HOST_MTU = 1500  # every test host's link
MSS_OFFERED = 1460  # what a host on a 1500-byte link offers, and the MSS probe carries
RETRY_WAIT = 0.5  # s: an answer inside the lab takes milliseconds; the first round waits the full timeout
READY_S = 60.0  # the capture worker imports scapy (about 1 s) and opens one socket per link


@dataclass(frozen=True)
class Check:
    kind: str  # reach | isolation | esp | throughput | test (the plan's own tests:)
    src: str
    dst: str
    ok: bool
    detail: str
    proto: str | None = None
    name: str | None = None  # a plan test's name
    covers: tuple[str, ...] | None = None  # isolation: every network its probes went to
    mbps: float | None = None  # throughput: TCP goodput
    wire_mbps: float | None = None  # throughput: rate on the sending gateway's backbone link
    attempts: int | None = None  # reach: the sends it took, when loss on the path made verify resend
    mtu: int | None = None  # mtu: the largest packet that crosses the tunnel both ways
    mss: int | None = None  # mtu: the MSS of a TCP handshake across the tunnel

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
            cause = (f"connection {down[0].label} is {down[0].connectivity_state}: "
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
    """Reach: every address space to every address space, ICMP, TCP and UDP. Isolation: one ICMP
    echo from the first host of each network to the first host of each network it must not reach.
    The lab isolates by routes (fail-closed, no route to a network without a tunnel), and routes do
    not look at protocols: what proves a network unreachable for one protocol proves it for all."""
    hosts = {n: _hosts_by_space(lab, n) for n in dict.fromkeys(h.owner for h in lab.topology.hosts)}
    probes = []
    for pair in pairs:
        for a, b in ((pair.a, pair.b), (pair.b, pair.a)):
            if not pair.intended:
                if hosts[a] and hosts[b]:
                    probes.append(Probe(f"p{len(probes)}", "icmp", hosts[a][0], hosts[b][0], False, ""))
                continue
            for src in hosts[a]:
                for dst in hosts[b]:
                    for proto in PROTOS:
                        probes.append(Probe(f"p{len(probes)}", proto, src, dst, True, pair.cause))
    return probes


def user_probes(lab: Lab, tests: list[UserCheck], start: int) -> list[Probe]:
    """The plan's own tests: as probes, numbered from start."""
    hosts = {h.node: h for h in lab.topology.hosts}
    by_address = {str(h.address): h for h in lab.topology.hosts}
    probes = []
    for test in tests:
        dst = hosts.get(test.dst) or by_address.get(test.dst) or Host(
            test.dst, "", "", IPv4Address(test.dst), IPv4Network(f"{test.dst}/32"))
        probes.append(Probe(f"p{start + len(probes)}", test.proto, hosts[test.src], dst, test.expect == "reach",
                            "", test.port or RESPONDER_PORT, test.name))
    return probes


def _test_check(p: Probe, run: "ProbeRun", condition: str = "") -> Check:
    got = p.id in run.answered
    expected = "reach" if p.expect_reply else "blocked"
    seen = "answered" if got else ("no answer" + (f" ({run.refused[p.id]})" if p.id in run.refused else ""))
    port = f" on port {p.port}" if p.proto != "icmp" else ""
    dst = f"{p.dst.node} ({p.dst.address})" if p.dst.netns else str(p.dst.address)
    return Check("test", f"{p.src.node} ({p.src.address})", dst, got == p.expect_reply,
                 f"{p.test}: {condition}expected {expected}, {seen}{port}", p.proto, name=p.test)


def _wait_for(lab: Lab, done, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not done(collect(lab, with_reasons=False)):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def during_checks(lab: Lab, timeout: float) -> list[Check]:
    """The plan tests that must hold while a connection is disconnected: disconnect it through the
    workflow (as `vnetlab disconnect` does), probe, and connect it again, unless it was disconnected
    before verify started. Killed in between, the lab stays disconnected: `status` says so and
    `vnetlab connect` restores it."""
    from .workflow import set_connected

    checks = []
    for cond in dict.fromkeys(t.disconnect for t in lab.plan.tests if t.disconnect):
        vnet, site = cond
        already = not set_connected(lab.name, vnet, site, connect=False).actions  # disconnected before verify
        try:
            _wait_for(lab, lambda rows: all(r.connectivity_state != "Connected" for r in rows
                                            if (r.gateway, r.local_site) == cond), 10)
            probes = user_probes(lab, [t for t in lab.plan.tests if t.disconnect == cond], 0)
            run = run_probes(lab, probes, None, timeout)
            checks += [_test_check(p, run, f"with {vnet}/{site} disconnected, ") for p in probes]
        finally:
            if not already:
                set_connected(lab.name, vnet, site, connect=True)
                wanted = expected_up(lab)
                _wait_for(lab, lambda rows: all(r.connectivity_state == "Connected" for r in rows
                                                if (r.gateway, r.local_site) in wanted), 20)
    return checks


def _python_in(ns: str, worker: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *worker_command(worker, *args)]


class Workers:
    """Worker processes started for one verify run; journalled in the lab's registry, so
    `down` removes them, stopped by pid when verify ends, and ended by the kernel when verify is
    killed (an orphaned iperf3 would still be sending while the next verify captures the backbone)."""

    def __init__(self, lab: Lab):
        self.registry = Registry(lab.directory)
        self.procs: list[subprocess.Popen] = []

    def start(self, argv: list[str], what: str, stdin: bool = True) -> subprocess.Popen:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=WORKER_CWD,
                                preexec_fn=end_with_parent)
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
    ready, said = wait_for_word(proc.stdout.fileno(), b"ready\n", READY_S)
    if not ready:
        if proc.poll() is None:
            raise EnvironmentProblem(f"{what} did not start within {READY_S:.0f} s: {said.strip()}")
        raise EnvironmentProblem(f"{what} did not start: {said.strip()} {proc.stderr.read()[-500:]}")


@dataclass(frozen=True)
class ProbeRun:
    """What the probe engine and the backbone capture saw."""

    answered: set[str]
    refused: dict[str, str]  # probe id -> where it was refused (an ICMP error or a reset quoting it)
    drops: dict[str, int]  # namespace -> packets its receive sockets dropped (then no verdict is trusted)
    unresolved: list[str]  # namespaces whose router did not answer the warm-up echo
    verdict: dict  # the backbone capture's
    attempts: dict[str, int]  # probe id -> sends, for every probe sent more than once
    retries: int  # the rounds of resending allowed
    mtu: dict[str, dict]  # search id -> {"mtu", "silent", "why", "mss"}, for the tunnels that carried an echo


def retries_for(loss: float) -> int:
    """How many times to resend a probe without an answer when a backbone path drops `loss` percent
    of packets: a probe and its answer may cross two lossy links each way, and a working path
    should fail a probe with odds below one in a million. Bounded: a blocked path still fails,
    after at most MAX_RETRIES more rounds of RETRY_WAIT."""
    if loss <= 0:
        return 0
    lost = 1 - (1 - min(loss, 99.0) / 100) ** 4  # one attempt's odds of no answer
    return min(MAX_RETRIES, math.ceil(math.log(1e-6) / math.log(lost)) - 1)


def lab_loss(lab: Lab) -> float:
    """The highest loss any backbone path of the lab is set to (plan or `vnetlab impair`)."""
    return max((gw.path.loss for gw in lab.topology.gateways), default=0.0)


@dataclass(frozen=True)
class MtuSearch:
    """A path MTU search between the hosts of an ICMP reach probe, run once that probe was answered."""

    id: str
    probe: Probe

    def request(self) -> dict:
        p = self.probe
        return {"id": self.id, "ns": p.src.netns, "src": str(p.src.address), "dst": str(p.dst.address),
                "port": p.port, "max": HOST_MTU, "mss": MSS_OFFERED, "after": p.id}


def mtu_searches(probes: list[Probe]) -> list[MtuSearch]:
    """One path MTU search per connected pair of networks and direction, from its first ICMP reach
    probe. The echo crosses both ways, but a gateway that knows its small link answers "too big"
    first, which would hide the other direction's black hole: each side searches."""
    searches, seen = [], set()
    for p in probes:
        pair = (p.src.owner, p.dst.owner)
        if p.expect_reply and p.test is None and p.proto == "icmp" and pair not in seen:
            seen.add(pair)
            searches.append(MtuSearch(f"m{len(searches)}", p))
    return searches


JUDGE_SECONDS = 600  # the capture judges every byte it saw: a 300-VNet ring's run takes tens of seconds


def _answer(proc: subprocess.Popen, request: str, seconds: float, what: str) -> tuple[str, str]:
    """A worker's answer to its one request, within `seconds`; past them, a clear failure (exit 3)."""
    try:
        return proc.communicate(request, timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise EnvironmentProblem(f"{what} gave no answer within {seconds:.0f} s") from None


def run_probes(lab: Lab, probes: list[Probe], pcap_dir: Path | None, timeout: float,
               searches: list[MtuSearch] = ()) -> ProbeRun:
    """Send every probe from one engine process (workers/prober.py), capturing the backbone meanwhile;
    resent, a bounded number of times, when a path of the lab is lossy."""
    retries = retries_for(lab_loss(lab))
    workers = Workers(lab)
    try:
        links = [f"{v.if_a}={gw.name}={v.addr_b.ip}" for gw in lab.topology.gateways
                 for v in [lab.topology.backbone_link(gw)]]
        capture = workers.start(_python_in(lab.topology.backbone, "capture", *links),
                                "backbone capture")
        _wait_ready(capture, "the backbone capture")
        routers = {r.ns: str(r.via) for r in lab.topology.routes if r.dst.prefixlen == 0 and r.via}
        hosts: dict[str, dict] = {}
        for p in probes:
            for h in (p.src, p.dst):
                if h.netns:
                    hosts.setdefault(h.netns, {"ns": h.netns, "address": str(h.address),
                                               "router": routers.get(h.netns), "ports": set()})
            if p.dst.netns:
                hosts[p.dst.netns]["ports"].add(p.port)
        # a nonce per reach probe; the isolation probes of one host share one (they differ by destination)
        shared = {ns: secrets.token_hex(16) for ns in {p.src.netns for p in probes}}
        nonces = {p.id: secrets.token_hex(16) if p.expect_reply or p.test else shared[p.src.netns] for p in probes}
        request = {"timeout": timeout, "retries": retries, "retry_wait": RETRY_WAIT,
                   "hosts": [{**h, "ports": sorted(h["ports"])} for h in hosts.values()],
                   "probes": [{"id": p.id, "ns": p.src.netns, "proto": p.proto, "src": str(p.src.address),
                               "dst": str(p.dst.address), "port": p.port, "nonce": nonces[p.id],
                               "expect_reply": p.expect_reply} for p in probes],
                   "mtu": [m.request() for m in searches]}
        engine = workers.start(worker_command("prober"), "probe engine")
        rounds = timeout + retries * RETRY_WAIT + len(probes) * (1 + retries) / 500
        out, err = _answer(engine, json.dumps(request), rounds + 60, "the probe engine")
        if engine.returncode != 0:
            raise EnvironmentProblem(f"the probe engine failed: {err[-800:]}")
        result = json.loads(out)
        private = sorted({str(n) for v in lab.plan.vnets for n in v.address_space}
                         | {str(n) for s in lab.plan.local_sites for n in s.address_space})
        if pcap_dir is not None:
            try:
                pcap_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UsageError(f"--pcap {pcap_dir}: cannot create: {exc.strerror or exc}") from None
        judge = {"nonces": sorted(set(nonces.values())), "private": private,
                 "pcap_dir": str(pcap_dir.resolve()) if pcap_dir else None}
        out, err = _answer(capture, json.dumps(judge) + "\n", JUDGE_SECONDS, "the backbone capture's judgement")
        if capture.returncode != 0:
            raise EnvironmentProblem(f"backbone capture failed: {err[-500:]}")
        if pcap_dir is not None:
            write_tables(key_tables(lab), pcap_dir)  # the pcaps' ESP, decryptable in Wireshark
        return ProbeRun(set(result["answered"]), result["refused"], result["drops"], result["unresolved"],
                        json.loads(out), result["attempts"], retries, result["mtu"])
    finally:
        workers.stop_all()


def _counter_deltas(lab: Lab, before: list[ConnectionStatus], after: list[ConnectionStatus]) -> dict[frozenset, str]:
    """Per pair of networks, how each tunnel end's byte counters moved while the probes ran: which
    side sent into the tunnel and which side received tells the hop that lost a probe."""
    old = {(s.gateway, s.local_site): s for s in before}
    found: dict[frozenset, list[str]] = defaultdict(list)
    for s in after:
        site_vnet = lab.plan.vnet_of_site(lab.plan.site(s.local_site)) if s.gateway != s.local_site else None
        peer = s.vnet if s.gateway == s.local_site else (site_vnet.name if site_vnet else s.local_site)
        o = old.get((s.gateway, s.local_site))
        if o is None:
            continue
        out, inn = s.egress_bytes - o.egress_bytes, s.ingress_bytes - o.ingress_bytes
        found[frozenset((s.gateway, peer))].append(
            f"{s.label} {s.connectivity_state}, sent {out:+d} B, received {inn:+d} B")
    return {k: "; tunnel counters during the probes: " + "; ".join(v) for k, v in found.items()}


def _lost(p: Probe, run: ProbeRun) -> str:
    """Why a reach probe got no answer, naming the hop where that is known."""
    tries = f" in {run.retries + 1} attempts (loss on the path)" if run.retries else ""
    if p.src.netns in run.drops or p.dst.netns in run.drops:
        ns = p.src.netns if p.src.netns in run.drops else p.dst.netns
        return f"no verdict: the probe engine's sockets in {ns} dropped {run.drops[ns]} packet(s) (local overload)"
    if p.src.netns in run.unresolved:
        return f"no answer: {p.src.node} could not reach its own router (neighbour unresolved)"
    if p.id in run.refused:
        return f"no answer: refused, {run.refused[p.id]}" + (f"; {p.cause}" if p.cause else "")
    if p.cause:
        return f"no answer{tries}: {p.cause}"
    return f"no answer{tries} although the connection is Connected (fail-closed drop or no route)"


def mtu_check(p: Probe, found: dict) -> Check:
    """What the path MTU search found on one tunnel, and whether TCP would fall into a black hole."""
    mtu, mss = found["mtu"], found["mss"]
    larger = ("vanish without an ICMP \"fragmentation needed\" (a black hole)" if found["silent"]
              else f"get {found['why']}" if found["why"] else "do not leave the host")
    clamped = f" ({MSS_OFFERED} offered: a gateway's clamp, or the answering host's learned path MTU)" \
        if mss and mss < MSS_OFFERED else ""
    handshake = f"TCP MSS across the tunnel {mss}{clamped}" if mss else "no SYN-ACK to the MSS probe"
    detail = f"path MTU {mtu} bytes (the largest packet that crosses both ways, DF set); larger ones {larger}; {handshake}"
    ok = not found["silent"] or (mss is not None and mss + 40 <= mtu)
    if not ok:
        detail = (f"TCP black hole: segments of {(mss or MSS_OFFERED) + 40} bytes do not cross and nothing tells the "
                  f"sender; clamp the MSS at {mtu - 40} or less (gateway.tcp_mss_clamp, or `vnetlab clamp`; Azure "
                  f"asks 1350 where the path carries 1500-byte packets); " + detail)
    return Check("mtu", f"{p.src.node} ({p.src.address})", f"{p.dst.node} ({p.dst.address})", ok, detail,
                 mtu=mtu, mss=mss)


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
    if verdict["blind_links"]:
        problems.append(f"the capture did not see its canary on the link of {', '.join(verdict['blind_links'])}: "
                        "it cannot vouch for what crossed there")
    detail = (f"{esp} ESP packets ({verdict['esp_bytes']} bytes) and {ike} IKE packets on the backbone; "
              + ("; ".join(problems) if problems else "no clear-text lab traffic, no nonce in any payload; the "
                 "capture saw its canary on every link"))
    return Check("esp", "backbone", "backbone", not problems, detail)


def verify(lab: Lab, pcap_dir: Path | None = None, timeout: float = 1.5, throughput: bool = False,
           duration: float = 3.0) -> list[Check]:
    statuses = collect(lab)
    pairs = network_pairs(lab, statuses)
    derived = plan_probes(lab, pairs)
    probes = derived + user_probes(lab, [t for t in lab.plan.tests if t.disconnect is None], len(derived))
    searches = mtu_searches(derived)
    run = run_probes(lab, probes, pcap_dir, timeout, searches)
    answered = run.answered
    checks = []
    isolated: dict[Host, list[Probe]] = defaultdict(list)
    counters: dict[frozenset, str] = {}  # read only when a reach probe failed
    for p in probes:
        got = p.id in answered
        src = f"{p.src.node} ({p.src.address})"
        dst = f"{p.dst.node} ({p.dst.address})" if p.dst.netns else str(p.dst.address)
        if p.test is not None:
            checks.append(_test_check(p, run))
        elif p.expect_reply:
            tries = run.attempts.get(p.id) if got else None
            detail = f"answered after {tries} attempts (loss on the path), nonce returned" if tries else \
                "answered, nonce returned"
            if not got:
                counters = counters or _counter_deltas(lab, statuses, collect(lab, with_reasons=False))
                detail = _lost(p, run) + counters.get(frozenset((p.src.owner, p.dst.owner)), "")
            checks.append(Check("reach", src, dst, got, detail, p.proto, attempts=tries))
        else:
            isolated[p.src].append(p)
    for host, mine in isolated.items():  # isolation, proven per source: every network it must not reach
        networks = tuple(dict.fromkeys(p.dst.owner for p in mine))
        leaks = [f"{p.dst.node} ({p.proto})" for p in mine if p.id in answered]
        protos = ", ".join(dict.fromkeys(p.proto for p in mine))
        detail = (f"answered although the plan does not connect these networks (leak or transit): {', '.join(leaks)}"
                  if leaks else f"no answer from any of {len(networks)} network(s) the plan does not connect, as it "
                  f"says ({len(mine)} probes: {protos})")
        shown = ", ".join(networks) if len(networks) <= 3 else f"{len(networks)} networks not connected to {host.owner}"
        checks.append(Check("isolation", f"{host.node} ({host.address})", shown, not leaks, detail, covers=networks))
    checks += [mtu_check(m.probe, run.mtu[m.id]) for m in searches if m.id in run.mtu]
    checks.append(esp_check(run.verdict, len(answered)))
    checks += during_checks(lab, timeout)
    if throughput:
        checks.extend(throughput_checks(lab, pairs, statuses, duration))
    return checks


def throughput_checks(lab: Lab, pairs: list[Pair], statuses: list[ConnectionStatus], duration: float) -> list[Check]:
    from .throughput import Direction, MeasurementError, bare_backbone, judge, measure

    gateways = {g.name: g for g in lab.topology.gateways if g.kind == "vnet"}
    cipher = next((s.cipher for s in statuses if s.cipher), None)
    workers = Workers(lab)
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
