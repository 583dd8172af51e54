"""`vnetlab demo`: narrated, scripted runs on their own lab. Each step says what it does and what
it expects, then what it observed; exit 0 only when every observation matched. The lab is
removed at the end, whatever happened."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from . import configs_dir, importing
from . import lab as labmod
from . import workflow
from .capture import recorded_messages
from .plan import default_plan_path
from .problems import EnvironmentProblem, ExitCode
from .status import ConnectionStatus, collect
from .verify import verify

WAIT = 8.0  # seconds to wait for a state to settle after a change


@dataclass
class Narrator:
    failures: list[str] = field(default_factory=list)
    step: int = 0

    def say(self, what: str, cmdlet: str = "") -> None:
        self.step += 1
        print(f"\n[{self.step}] {what}" + (f"\n    (classic: {cmdlet})" if cmdlet else ""), flush=True)

    def observe(self, expectation: str, ok: bool, seen: str) -> None:
        print(f"    expect: {expectation}\n    seen:   {seen}\n    {'OK' if ok else 'MISMATCH'}", flush=True)
        if not ok:
            self.failures.append(f"step {self.step}: expected {expectation}; saw {seen}")


def _states(lab: labmod.Lab) -> dict[tuple[str, str], ConnectionStatus]:
    return {(s.gateway, s.local_site): s for s in collect(lab)}


def _wait_for(name: str, predicate: Callable[[dict], bool],
              wait: float = WAIT) -> dict[tuple[str, str], ConnectionStatus]:
    deadline = time.monotonic() + wait
    while True:
        states = _states(labmod.open_lab(name))
        if predicate(states) or time.monotonic() > deadline:
            return states
        time.sleep(0.2)


def _show(states: dict) -> str:
    return "; ".join(f"{st.label}: {st.connectivity_state}" + (f" ({st.reason})" if st.reason else "")
                     for st in states.values())


def _verify(n: Narrator, name: str, expect_pass: bool) -> None:
    checks = verify(labmod.open_lab(name))
    reach = [c for c in checks if c.kind == "reach"]
    esp = next(c for c in checks if c.kind == "esp")
    passed = sum(c.ok for c in reach)
    seen = f"{passed}/{len(reach)} reach probes answered; backbone: {esp.detail}"
    if expect_pass:
        n.observe("every probe answered, only ESP on the backbone", all(c.ok for c in checks), seen)
    else:
        n.observe("no probe answered, and nothing in clear on the backbone", passed == 0 and esp.ok, seen)


def _variant(source: Path, ike: int, plan_path: Path) -> Path:
    """The plan with every connection on IKE version `ike`, built from the plan's structure (and
    validated again by `up`), never by editing its text."""
    data = yaml.safe_load(source.read_text())
    for conn in data.get("connections", []):
        conn["ike_version"] = ike
    plan_path.write_text(yaml.safe_dump(data, sort_keys=False))
    return plan_path


def _ran_ike(n: Narrator, name: str, ike: int) -> None:
    ran = {s.ike_version for s in _states(labmod.open_lab(name)).values()}
    n.observe(f"every connection negotiates IKEv{ike}", ran == {ike}, f"IKE versions in use: {sorted(ran)}")


def _psk_mismatch(n: Narrator, name: str, ike: int, plan_path: Path) -> None:
    n.say(f"Bring up the walkthrough's two VNets, both sides keyed alike, IKEv{ike}", "Set-AzureVNetGatewayKey x2")
    labmod.up(str(_variant(default_plan_path(), ike, plan_path)), name, "auto", 20, False)
    states = _wait_for(name, lambda s: all(x.connectivity_state == "Connected" for x in s.values()))
    n.observe("both connections Connected", all(x.connectivity_state == "Connected" for x in states.values()),
              _show(states))
    _ran_ike(n, name, ike)
    n.say("Probe across the tunnel (vnetlab verify)")
    _verify(n, name, True)

    n.say("Re-key TestVNet1's side only, with a different key",
          "Set-AzureVNetGatewayKey -VNetName TestVNet1 -LocalNetworkSiteName VNet4Local -SharedKey <other>")
    since = time.time()
    workflow.set_key(name, "TestVNet1", "VNet4Local", "DemoOtherKey9")
    end = ("TestVNet1", "VNet4Local")
    # IKEv2 ends the attempt at once (AUTHENTICATION_FAILED); IKEv1 has no such answer: Main Mode
    # retransmits the message the peer cannot decrypt until it gives up, so it shows Connecting meanwhile
    allowed = {"NotConnected"} if ike == 2 else {"Connecting", "NotConnected"}
    states = _wait_for(name, lambda s: "pre-shared key mismatch" in s[end].reason
                       and s[end].connectivity_state in allowed)
    n.observe(f"{' or '.join(sorted(allowed))}, cause named: pre-shared key mismatch"
              + (" (IKEv1 retransmits until it gives up)" if ike == 1 else ""),
              states[end].connectivity_state in allowed and "pre-shared key mismatch" in states[end].reason,
              f"{states[end].connectivity_state}: {states[end].reason}")
    n.say("Read the wire: the decisive IKE message, decrypted with the gateways' session keys (vnetlab trace)")
    _decisive_packet(n, name, ike, since)
    n.say("Probe again: the gateways must drop, never leak")
    _verify(n, name, False)

    n.say("Restore the key on TestVNet1's side", "Set-AzureVNetGatewayKey ... -SharedKey ********")
    workflow.set_key(name, "TestVNet1", "VNet4Local", "A1b2C3D4")
    states = _wait_for(name, lambda s: all(x.connectivity_state == "Connected" for x in s.values()))
    n.observe("both connections Connected again", all(x.connectivity_state == "Connected" for x in states.values()),
              _show(states))
    n.say("Probe once more")
    _verify(n, name, True)


def _decisive_packet(n: Narrator, name: str, ike: int, since: float) -> None:
    """IKEv2: the IKE_AUTH answered with AUTHENTICATION_FAILED. IKEv1 has no such notify: a wrong
    key derives another encryption key, so Main Mode's message 5 is garbage to the responder."""
    after = datetime.fromtimestamp(since - 0.5, timezone.utc).isoformat(timespec="milliseconds")
    messages = [m for m in recorded_messages(labmod.open_lab(name)) if m.time >= after]
    if ike == 2:
        hit = next((m for m in messages if m.exchange == "IKE_AUTH" and "AUTHENTICATION_FAILED" in m.notifies), None)
        expect = "an IKE_AUTH response carrying N(AUTHENTICATION_FAILED)"
    else:
        hit = next((m for m in messages if m.exchange.startswith("Main Mode 5/6") and "another key" in m.note), None)
        expect = "Main Mode message 5 that only the sender's key opens"
    n.observe(expect, hit is not None, hit.line()[14:] if hit else f"{len(messages)} IKE messages, none of them")


def _walkthrough(n: Narrator, name: str, ike: int, plan_path: Path) -> None:
    plan = _variant(configs_dir() / "plans" / "walkthrough-start.yaml", ike, plan_path)
    n.say("Planning and 'Create virtual networks', 'Configure sites and gateways': TestVNet1 (East US) and "
          "TestVNet4 (West US), each with a GatewaySubnet and a Standard dynamic-routing gateway; each local "
          "site still holds the dummy address 5.4.3.2", "New-AzureVNetGateway -GatewayType DynamicRouting")
    labmod.up(str(plan), name, "auto", 20, False)
    states = _states(labmod.open_lab(name))
    n.observe("both connections NotConnected (no keys, dummy addresses)",
              all(x.connectivity_state == "NotConnected" for x in states.values()), _show(states))

    n.say("Update local sites, part 1: read each gateway's public IP", "Get-AzureVNetGateway -VNetName ...")
    vips = {v: workflow.gateway(name, v)["VIPAddress"] for v in ("TestVNet1", "TestVNet4")}
    n.observe("a VIP from the documentation range for each gateway",
              all(ip.startswith("203.0.113.") for ip in vips.values()), str(vips))

    n.say("Update local sites, part 2: VNet4Local -> TestVNet4's VIP, VNet1Local -> TestVNet1's VIP",
          "Edit local site: VPN gateway IP address")
    workflow.update_site(name, "VNet4Local", vips["TestVNet4"])
    workflow.update_site(name, "VNet1Local", vips["TestVNet1"])
    states = _states(labmod.open_lab(name))
    n.observe("still NotConnected: no shared keys yet",
              all(x.connectivity_state == "NotConnected" and "key not set" in x.reason for x in states.values()),
              _show(states))

    n.say("Create connections: set the key on TestVNet1's side",
          "Set-AzureVNetGatewayKey -VNetName TestVNet1 -LocalNetworkSiteName VNet4Local -SharedKey ********")
    workflow.set_key(name, "TestVNet1", "VNet4Local", "A1b2C3D4")
    states = _states(labmod.open_lab(name))
    end = states[("TestVNet1", "VNet4Local")]
    n.observe("NotConnected until the other side has its key", end.connectivity_state != "Connected"
              and "key not set on TestVNet4" in end.reason, f"{end.connectivity_state}: {end.reason}")
    n.say("... and on TestVNet4's side",
          "Set-AzureVNetGatewayKey -VNetName TestVNet4 -LocalNetworkSiteName VNet1Local -SharedKey ********")
    workflow.set_key(name, "TestVNet4", "VNet1Local", "A1b2C3D4")
    states = _wait_for(name, lambda s: all(x.connectivity_state == "Connected" for x in s.values()))
    n.observe("both connections Connected", all(x.connectivity_state == "Connected" for x in states.values()),
              _show(states))
    _ran_ike(n, name, ike)
    n.say("Verify the connection", "Get-AzureVNetConnection; then traffic between the VNets")
    _verify(n, name, True)


DEAD_PEER_TIMEOUT = 10  # seconds: the demo's dpd_timeout (Azure's default is 45)


def _dead_peer(n: Narrator, name: str, ike: int, plan_path: Path) -> None:
    """A firewall on one gateway's path drops IKE, NAT-T and ESP: dead-peer detection declares the
    peer dead within the DPD timeout, the cause is named, and the tunnel heals by itself once cleared."""
    data = yaml.safe_load(_variant(default_plan_path(), ike, plan_path).read_text())
    for conn in data["connections"]:
        conn.setdefault("ipsec", {})["dpd_timeout"] = DEAD_PEER_TIMEOUT
    plan_path.write_text(yaml.safe_dump(data, sort_keys=False))
    n.say(f"Bring up the walkthrough's two VNets (IKEv{ike}) with a {DEAD_PEER_TIMEOUT} s DPD timeout",
          "ipsec: {dpd_timeout: 10}; Azure's default is 45 s, 9-3600")
    labmod.up(str(plan_path), name, "auto", 20, False)
    states = _wait_for(name, lambda s: all(x.connectivity_state == "Connected" for x in s.values()))
    n.observe("both connections Connected", all(x.connectivity_state == "Connected" for x in states.values()),
              _show(states))

    n.say("A firewall on TestVNet1's path starts dropping IKE, NAT-T and ESP",
          "vnetlab impair --vnet TestVNet1 --block ike,natt,esp")
    workflow.impair(name, "TestVNet1", None, {"block": ["ike", "natt", "esp"]}, False)
    blocked = time.monotonic()
    deadline = blocked + DEAD_PEER_TIMEOUT * 1.25 + 5
    while True:
        states = _states(labmod.open_lab(name))
        if all(x.connectivity_state != "Connected" for x in states.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    took = time.monotonic() - blocked
    end = states[("TestVNet1", "VNet4Local")]
    n.observe(f"NotConnected within the DPD timeout + 25 % ({DEAD_PEER_TIMEOUT * 1.25:.1f} s), fault PeerReachability",
              took <= DEAD_PEER_TIMEOUT * 1.25 and all(x.connectivity_state != "Connected" for x in states.values())
              and (end.fault or {}).get("type") == "PeerReachability",
              f"after {took:.1f} s: {end.connectivity_state}, {(end.fault or {}).get('type')}: {end.reason}")
    n.say("Probe: nothing may cross, nothing in clear")
    _verify(n, name, False)

    n.say("The firewall rule is removed", "vnetlab impair --vnet TestVNet1 --clear")
    workflow.impair(name, "TestVNet1", None, {}, True)
    cleared = time.monotonic()
    states = _wait_for(name, lambda s: all(x.connectivity_state == "Connected" for x in s.values()), 20)
    n.observe("both connections Connected again by themselves (the initiator keeps trying)",
              all(x.connectivity_state == "Connected" for x in states.values()),
              f"after {time.monotonic() - cleared:.1f} s: {_show(states)}")
    n.say("Probe once more")
    _verify(n, name, True)


DEMO_MTU = 1400  # TestVNet4's backbone link in demo mtu
TCP_SECONDS = 2.0  # each bounded TCP transfer of demo mtu


def _tcp_transfer(name: str) -> float:
    """Mbit/s that a TCP transfer (iperf3, TCP_SECONDS) from TestVNet1/default to TestVNet4/default got across."""
    from .throughput import MeasurementError, iperf
    from .verify import Workers

    lab = labmod.open_lab(name)
    hosts = {h.node: h for h in lab.topology.hosts}
    workers = Workers(lab)
    try:
        return iperf(workers, hosts["TestVNet4/default"].netns, str(hosts["TestVNet4/default"].address),
                     hosts["TestVNet1/default"].netns, TCP_SECONDS).goodput
    except MeasurementError:
        return 0.0
    finally:
        workers.stop_all()


def _mtu_checks(name: str):
    """(the mtu checks of both directions, the smallest path MTU found, the reach checks)."""
    checks = verify(labmod.open_lab(name))
    mtus = [c for c in checks if c.kind == "mtu"]
    return mtus, min((c.mtu for c in mtus), default=None), [c for c in checks if c.kind == "reach"]


def _mtu(n: Narrator, name: str, ike: int, plan_path: Path) -> None:
    """A small MTU on one gateway's path, unknown to the other side: packets too large vanish (no
    ICMP comes back), so TCP stalls while pings pass; clamping the MSS on a gateway fixes it."""
    data = yaml.safe_load(_variant(default_plan_path(), ike, plan_path).read_text())
    data["backbone"] = {"TestVNet4": {"mtu": DEMO_MTU}}
    plan_path.write_text(yaml.safe_dump(data, sort_keys=False))
    n.say(f"Bring up the walkthrough's two VNets (IKEv{ike}); TestVNet4's link to the backbone carries only "
          f"{DEMO_MTU}-byte packets, and nothing on the path says so", f"backbone: {{TestVNet4: {{mtu: {DEMO_MTU}}}}}")
    labmod.up(str(plan_path), name, "auto", 20, False)
    states = _wait_for(name, lambda s: all(x.connectivity_state == "Connected" for x in s.values()))
    n.observe("both connections Connected (IKE's packets are small)",
              all(x.connectivity_state == "Connected" for x in states.values()), _show(states))

    n.say("Send data over TCP from TestVNet1/default to TestVNet4/default (iperf3)")
    rate = _tcp_transfer(name)
    n.observe("the transfer stalls: full-size segments vanish and no ICMP tells the sender", rate < 1.0,
              f"{rate:.2f} Mbit/s")

    n.say("Verify: small probes cross; the path MTU search finds the black hole")
    mtus, smallest, reach = _mtu_checks(name)
    hole = next((c for c in mtus if not c.ok), None)
    n.observe(f"every reach probe answered; path MTU below {DEMO_MTU} by the ESP overhead; larger packets lost "
              "without ICMP, and TCP's MSS does not fit: a TCP black hole",
              all(c.ok for c in reach) and len(mtus) == 2 and smallest is not None
              and 40 <= DEMO_MTU - smallest <= 100 and hole is not None and (hole.mss or 1460) + 40 > smallest,
              f"{sum(c.ok for c in reach)}/{len(reach)} reach; " + " | ".join(f"{c.src} -> {c.dst}: {c.detail}"
                                                                             for c in mtus))

    clamp = (smallest or DEMO_MTU) - 40
    n.say(f"Clamp the TCP MSS on TestVNet1's gateway at the path MTU - 40 = {clamp} (Azure asks 1350, which "
          "fits a path that carries 1500-byte packets; this one carries less)",
          f"vnetlab clamp --vnet TestVNet1 --mss {clamp}")
    workflow.clamp(name, "TestVNet1", clamp)
    mtus, _, _ = _mtu_checks(name)
    n.observe(f"the handshakes' MSS becomes {clamp} both ways, and the mtu checks pass",
              len(mtus) == 2 and all(c.ok and c.mss == clamp for c in mtus), " | ".join(c.detail for c in mtus))
    n.say("Send data over TCP again")
    rate = _tcp_transfer(name)
    n.observe("the transfer runs", rate >= 1.0, f"{rate:.1f} Mbit/s")


def _nat(n: Narrator, name: str, ike: int, plan_path: Path) -> None:
    """An on-premises VPN device behind a masquerading NAT: IKE detects it and moves to UDP 4500,
    and only the NAT's public address, in UDP 4500, appears on the backbone."""
    with importing():
        from scapy.layers.inet import IP, UDP
        from scapy.utils import rdpcap

    data = yaml.safe_load(_variant(configs_dir() / "plans" / "vnet-to-vnet-plus-onprem.yaml", ike,
                                   plan_path).read_text())
    data["local_sites"]["HQ"]["behind_nat"] = True
    plan_path.write_text(yaml.safe_dump(data, sort_keys=False))
    n.say(f"Bring up TestVNet1, TestVNet4 and the on-premises site HQ (IKEv{ike}); HQ's VPN device sits behind a "
          "NAT that masquerades it, as in a branch office", "local_sites: {HQ: {behind_nat: true}}")
    labmod.up(str(plan_path), name, "auto", 20, False)
    states = _wait_for(name, lambda s: all(x.connectivity_state == "Connected" for x in s.values()))
    n.observe("every connection Connected (HQ's device initiates: the NAT lets nobody in first)",
              all(x.connectivity_state == "Connected" for x in states.values()), _show(states))
    lab = labmod.open_lab(name)
    device = lab.topology.gateway("HQ")
    n.say("Ask each side what IKE's NAT detection found", "Get-AzureVNetConnection -VNetName TestVNet1")
    azure_side, hq_side = states[("TestVNet1", "HQ")], states[("HQ", "HQ")]
    n.observe("TestVNet1: the peer is behind a NAT; HQ: this side is behind a NAT",
              (azure_side.nat_traversal or "").startswith("the peer is behind a NAT")
              and (hq_side.nat_traversal or "").startswith("this side is behind a NAT"),
              f"TestVNet1: {azure_side.nat_traversal}; HQ: {hq_side.nat_traversal}")

    n.say("Verify, capturing the backbone: what crosses HQ's link?")
    pcaps = plan_path.parent / "pcap"
    checks = verify(lab, pcaps)
    bb_side = lab.topology.backbone_link(device).addr_a.ip
    seen = [p[IP] for p in rdpcap(str(pcaps / "HQ.pcap")) if IP in p and str(bb_side) not in (p[IP].src, p[IP].dst)]
    public, inside = str(device.public_ip), str(device.tunnels[0].local_ip)
    natt = [p for p in seen if UDP in p and p[UDP].sport == p[UDP].dport == 4500]
    n.observe(f"every check passes; on HQ's link only UDP 4500 to and from the NAT's address {public}, never the "
              f"device's own {inside}",
              all(c.ok for c in checks) and bool(natt) and len(natt) == len(seen)
              and all(public in (p.src, p.dst) and inside not in (p.src, p.dst) for p in seen),
              f"{sum(c.ok for c in checks)}/{len(checks)} checks passed; {len(seen)} packets on HQ's link, {len(natt)} "
              f"of them UDP 4500<->4500; addresses: {', '.join(sorted({p.src for p in seen} | {p.dst for p in seen}))}")


def run(scenario: str, name: str, ike: int) -> int:
    import tempfile

    labmod.require_root()
    if name in labmod.list_labs_any():  # before anything: the finally below removes the demo's lab
        raise EnvironmentProblem(f"a lab named '{name}' exists already; the demo builds and removes its own lab, so "
                                 f"it will not touch that one: choose another --name (or vnetlab down --name {name})")
    n = Narrator()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            SCENARIOS[scenario](n, name, ike, Path(tmp) / "plan.yaml")
        finally:
            n.say(f"Remove the demo's lab '{name}'")
            removed = labmod.down(name, False)
            n.observe("lab removed", removed == [name], ", ".join(removed) or "nothing to remove")
    print()
    if n.failures:
        print("demo FAILED:\n  " + "\n  ".join(n.failures))
        return ExitCode.CHECK_FAILED
    print(f"demo {scenario}: every observation matched ({n.step} steps)")
    return ExitCode.OK


SCENARIOS = {"psk-mismatch": _psk_mismatch, "walkthrough": _walkthrough, "dead-peer": _dead_peer, "mtu": _mtu,
             "nat": _nat}
