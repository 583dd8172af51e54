"""Connection state in the classic vocabulary (Get-AzureVNetConnection), read over vici, and the
one-line reason a connection is not Connected, backed by the daemons' own log lines."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from . import gateways
from netns.registry import read_jsonl

from .keyfiles import CLOSED_FILE
from .lab import Lab
from .model import BLOCKABLE
from .topology import GatewayNode, TunnelEnd

# (cause, regular expression for a charon log line, what it shows the gateway did). strongSwan's own
# net2net-psk-fail tests check the same lines.
MARKERS = (
    ("key", "MAC mismatched", "found the peer's AUTH payload MAC mismatched"),
    ("key", r"generating IKE_AUTH response \d+ \[ N\(AUTH_FAILED\) \]", "answered AUTHENTICATION_FAILED"),
    ("key", "received AUTHENTICATION_FAILED", "received AUTHENTICATION_FAILED"),
    ("key", "decryption failed", "could not decrypt the peer's payloads (invalid HASH_V1/ID_V1 payload length, "
                                 "decryption failed)"),
    ("nokey", "no shared key found", "found no shared key for the peer"),
    ("proposal", "NO_PROPOSAL_CHOSEN", "received NO_PROPOSAL_CHOSEN"),
    ("proposal", "no acceptable proposal found", "found no acceptable proposal"),
    ("proposal", "proposals unacceptable", "found the received proposals unacceptable"),
    ("ts", "TS_UNACCEPTABLE", "received TS_UNACCEPTABLE"),
    ("ts", "inacceptable", "refused the proposed traffic selectors"),
    ("unreachable", "giving up after", "gave up: no answer to its IKE requests"),
    ("unreachable", "retransmit", "retransmitted: no answer yet"),
)
LOG_TAIL = 256 * 1024


@dataclass(frozen=True)
class ConnectionStatus:
    gateway: str
    vnet: str
    local_site: str
    connectivity_state: str  # Connected | Connecting | NotConnected
    ingress_bytes: int
    egress_bytes: int
    last_connection_established: str | None
    ike_version: int
    dataplane: str
    remote_address: str
    cipher: str | None = None
    reason: str = ""
    evidence: list[str] = field(default_factory=list)
    fault: dict | None = None  # Network Watcher's vocabulary: {type, summary, recommended_actions}
    nat_traversal: str | None = None  # what IKE's NAT detection found: which side is behind a NAT

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def label(self) -> str:
        """'GATEWAY -> LOCAL SITE'; an on-premises device's end names the VNet it connects to."""
        return f"{self.gateway} -> {self.vnet if self.gateway == self.local_site else self.local_site}"


# Network Watcher's fault types (VPN troubleshoot), by the start of the reason the lab gives: one table
FAULTS = (
    ("pre-shared key mismatch", "Authentication", "The two sides' pre-shared keys differ.",
     ["Set the same key on both sides: vnetlab set-key (Set-AzureVNetGatewayKey)."]),
    ("key not set", "KeyNotSet", "A side of the connection has no pre-shared key.",
     ["Set the key on that side: vnetlab set-key."]),
    ("proposal mismatch", "IkePolicyMismatch", "The sides share no IKE or IPsec proposal.",
     ["Align the connections' ipsec: suite or proposals on both sides."]),
    ("traffic selectors", "TrafficSelectorMismatch", "The sides disagree on the networks the tunnel carries.",
     ["Make each local site's address space the peer VNet's (or site's) address space."]),
    ("gateway daemon of", "GatewayNotRunning", "The gateway's IKE daemon does not answer.",
     ["Wait for its supervisor to restart it, or vnetlab reset-gateway; if it stays down, down and up."]),
    ("disconnected", "Disconnected", "The connection was disconnected on purpose.",
     ["vnetlab connect (Set-AzureVNetGateway -Connect)."]),
    ("NAT traversal fails", "NatTraversal", "A side sits behind a NAT and UDP 4500 (NAT-T) does not cross the path.",
     ["Let UDP 4500 through every firewall on the path (vnetlab impair --clear).",
      "Make sure the device behind the NAT initiates: the NAT has no mapping for the other side's first packet."]),
    ("peer unreachable", "PeerReachability", "IKE gets no answer from the peer's address.",
     ["Check the local site's gateway address (vnetlab update-site).",
      "Check the path: a firewall dropping UDP 500/4500 or ESP (vnetlab impair --clear), a link down (vnetlab link up)."]),
    ("the backbone link of", "PeerReachability", "The gateway's link to the Internet is down.",
     ["Bring the link back: vnetlab link up."]),
)


def fault_of(reason: str) -> dict | None:
    """The fault type of a NotConnected connection, from the reason the lab gives; a peer's own
    choice ("X has disconnected its side", "no connection back") is named too."""
    for prefix, kind, summary, actions in FAULTS:
        if reason.startswith(prefix) or (kind == "Disconnected" and "has disconnected its side" in reason):
            return {"type": kind, "summary": summary, "recommended_actions": actions}
    if "has no connection back" in reason:
        return {"type": "PeerReachability", "summary": "Nothing answers this tunnel at the peer.",
                "recommended_actions": ["Add the peer's connection back to this gateway in the plan."]}
    return None


def _log_tail(directory: Path) -> list[str]:
    path = directory / "charon.log"
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, path.stat().st_size - LOG_TAIL))
            return fh.read().decode(errors="replace").splitlines()
    except OSError:
        return []


def _mask(line: str, lab: Lab) -> str:
    for gw in lab.topology.gateways:
        for t in gw.tunnels:
            if t.shared_key:
                line = line.replace(t.shared_key.reveal(), "********")
    return line


def _explain(cause: str, hits: list[tuple[str, str]], lab: Lab, gw: GatewayNode, t: TunnelEnd,
             peer_gw: GatewayNode, peer_end: TunnelEnd) -> str:
    seen = "; ".join(f"{side} {what}" for side, what in dict.fromkeys(hits))
    if cause == "key":
        return f"pre-shared key mismatch (IKEv{t.ike_version}): {seen}"
    if cause == "nokey":
        return f"key not set: {seen}"
    if cause == "proposal":
        return (f"proposal mismatch (NO_PROPOSAL_CHOSEN): {seen}; {gw.name} offers IKE "
                f"{','.join(t.ipsec.ike_proposals)} ESP {','.join(t.ipsec.esp_proposals)}; {peer_gw.name} accepts "
                f"IKE {','.join(peer_end.ipsec.ike_proposals)} ESP {','.join(peer_end.ipsec.esp_proposals)}")
    if cause in ("ts", "tsdiff"):
        title = ("traffic selectors refused (TS_UNACCEPTABLE): " + seen if cause == "ts" else
                 "traffic selectors differ between the two sides (only some CHILD_SAs can be built)")
        return (f"{title}; {gw.name} proposes "
                f"{', '.join(map(str, t.local_ts))} === {', '.join(map(str, t.remote_ts))}, {peer_gw.name} has "
                f"{', '.join(map(str, peer_end.local_ts))} === {', '.join(map(str, peer_end.remote_ts))}: the local "
                "site's address space must match the peer VNet's")
    return f"peer unreachable: {seen}"


def diagnose(lab: Lab, gw: GatewayNode, t: TunnelEnd) -> tuple[str, list[str]]:
    """Why this tunnel end is not Connected: facts of the plan first, then the daemons' logs,
    naming which side saw what. Evidence lines come with keys masked."""
    if lab.disconnected(gw.name, t.local_site):
        return "disconnected (Set-AzureVNetGateway -Disconnect); reconnect with vnetlab connect", []
    peer_gw, peer_end = lab.topology.peer_gateway(t), lab.topology.peer_end(t)
    if t.shared_key is None:
        return f"key not set on {gw.name} for {t.local_site} (vnetlab set-key)", []
    if not t.peer_in_lab or peer_gw is None:
        return (f"peer unreachable: no gateway answers at {t.remote_ip} (no answer to IKE_SA_INIT); "
                f"update local site {t.local_site}'s gateway_ip (vnetlab update-site)", [])
    if peer_end is None:
        return f"{peer_gw.name} has no connection back to {gw.name}: nothing answers this tunnel there", []
    if peer_end.shared_key is None:
        return f"key not set on {peer_gw.name} for {peer_end.local_site} (vnetlab set-key)", []
    if lab.disconnected(peer_gw.name, peer_end.local_site):
        return f"{peer_gw.name} has disconnected its side (vnetlab connect --vnet {peer_gw.name})", []
    blocked = [(g, g.path) for g in (gw, peer_gw) if g.path.block or g.path.loss >= 100]
    natted = next((g for g in (gw, peer_gw) if g.nat_ns), None)
    if natted and any("natt" in p.block and "ike" not in p.block and p.loss < 100 for _g, p in blocked):
        g = next(g for g, p in blocked if "natt" in p.block)
        return (f"NAT traversal fails (NatTraversal): {natted.name}'s VPN device sits behind a NAT, so IKE moves to "
                f"UDP 4500 and ESP rides in it, and {g.name}'s backbone path drops natt (UDP 4500); "
                f"vnetlab impair --{'vnet' if g.kind == 'vnet' else 'site'} {g.name} --clear lifts it"), []
    if blocked:
        said = "; ".join(f"{g.name}'s backbone path drops " + (", ".join(f"{b} ({BLOCKABLE[b]})" for b in sorted(p.block))
                                                              or "everything (loss 100%)") for g, p in blocked)
        g = blocked[0][0]
        return (f"peer unreachable (PeerReachability): {said}; vnetlab impair --{'vnet' if g.kind == 'vnet' else 'site'} "
                f"{g.name} --clear lifts it"), []
    found: list[tuple[str, str, str, str]] = []  # (time, cause, side, what) in log order
    evidence: dict[str, list[str]] = {}
    for side, directory, conn, ips in ((gw.name, lab.gw_dir(gw), t.conn_id, (t.remote_ip,)),
                                       (peer_gw.name, lab.gw_dir(peer_gw), peer_end.conn_id, (t.identity,))):
        for line in _log_tail(directory):
            if f"<{conn}|" not in line and not any(str(ip) in line for ip in ips):
                continue
            for cause, marker, what in MARKERS:
                if re.search(marker, line):
                    found.append((line[:19], cause, side, what))
                    evidence.setdefault(cause, []).append(f"{side}: {_mask(line.strip(), lab)}")
                    break
    if not found:
        if set(t.remote_ts) != set(peer_end.local_ts) or set(t.local_ts) != set(peer_end.remote_ts):
            return _explain("tsdiff", [], lab, gw, t, peer_gw, peer_end), []
        return "not established yet", []
    found.sort(key=lambda f: f[0])
    cause = found[-1][1]
    hits = [(side, what) for _t, c, side, what in found if c == cause]
    return _explain(cause, hits[-6:], lab, gw, t, peer_gw, peer_end), evidence[cause][-6:]


def _established_at(seconds_ago: int | None) -> str | None:
    if seconds_ago is None:
        return None
    at = datetime.now(timezone.utc) - timedelta(seconds=seconds_ago)
    return at.isoformat(timespec="seconds")


def closed_bytes(lab: Lab) -> dict[tuple[str, str], tuple[int, int]]:
    """Per (gateway, connection): the bytes in and out of every CHILD_SA that closed (a rekey's old
    SA included), from charon's own "closing CHILD_SA" lines (workers/keylog.py keeps them), so that
    counters are cumulative, as Azure's are. An SA has two ends: what one gateway sent on SPI X,
    its peer received on SPI X. A daemon reports 0 for an outbound SA it replaced early (the rekey
    responder does), so each count is the larger of the two ends' reports."""
    once: dict[tuple[str, str, str], dict] = {}  # IKEv1 peers may both close one SA: counted once
    for gw in lab.topology.gateways:
        conn_of = {child: t.conn_id for t in gw.tunnels for child, _l, _r in t.children}
        for r in read_jsonl(lab.gw_dir(gw) / CLOSED_FILE):
            if r["child"] in conn_of:
                once[(gw.name, r["spi_in"], r["spi_out"])] = {**r, "conn": conn_of[r["child"]]}
    received = {r["spi_in"]: r["bytes_in"] for r in once.values()}
    sent = {r["spi_out"]: r["bytes_out"] for r in once.values()}
    totals: dict[tuple[str, str], tuple[int, int]] = {}
    for (gateway, _i, _o), r in once.items():
        i, o = totals.get((gateway, r["conn"]), (0, 0))
        totals[(gateway, r["conn"])] = (i + max(r["bytes_in"], sent.get(r["spi_in"], 0)),
                                        o + max(r["bytes_out"], received.get(r["spi_out"], 0)))
    return totals


def _nat_seen(lab: Lab, answers: dict, t: TunnelEnd, sa: gateways.SaState | None) -> str | None:
    """Which side of a tunnel IKE found behind a NAT: each side knows it of itself (nat-local)."""
    peer_gw, peer_end = lab.topology.peer_gateway(t), lab.topology.peer_end(t)
    peer_sa = (answers.get(peer_gw.name) or {}).get(peer_end.conn_id) if peer_gw and peer_end else None
    here, there = bool(sa and sa.behind_nat), bool(peer_sa and peer_sa.behind_nat)
    if not (here or there):
        return None
    side = "both sides are" if here and there else "this side is" if here else "the peer is"
    return f"{side} behind a NAT (NAT-T: ESP in UDP 4500)"


def collect(lab: Lab, with_reasons: bool = True, links_down: set[str] | None = None) -> list[ConnectionStatus]:
    """Every connection's state, as Get-AzureVNetConnection gives it. links_down: the caller's own
    look at the links (Lab.links_down), when it has one; else this takes one."""
    # when each connection last became Connected, from the gateways' own events: an exact moment that
    # neither moves with the clock between two calls nor at a rekey (rekeys fire no up/down event)
    events = lab.events()
    connected_at = {(e["gateway"], e["local_site"]): e["time"] for e in events if e.get("to") == "Connected"}
    carried = closed_bytes(lab)
    links_down = lab.links_down() if links_down is None else links_down
    answers: dict[str, dict[str, gateways.SaState] | None] = {}
    silent: dict[str, str] = {}  # gateway -> why its daemon gave no answer
    for gw in lab.topology.gateways:
        try:
            answers[gw.name] = gateways.list_sas(lab.gw_dir(gw))
        except gateways.GatewayDown as exc:
            answers[gw.name] = None
            silent[gw.name] = "is not running" if exc.gone else f"does not answer ({exc.why})"
    result = []
    for gw in lab.topology.gateways:
        sas, down_reason = answers[gw.name] or {}, ""
        if gw.name in silent:
            down_reason = (f"gateway daemon of {gw.name} {silent[gw.name]}: its supervisor restarts it "
                           "within seconds; if it stays down, see vnetlab gateway, then down and up")
        if gw.name in links_down:
            down_reason = (f"the backbone link of {gw.name} is down: no route to any peer (its SAs may still be "
                           "installed, but nothing crosses); when the link comes back its routes are put back")
        for t in gw.tunnels:
            sa = sas.get(t.conn_id)
            earlier_in, earlier_out = carried.get((gw.name, t.conn_id), (0, 0))
            if gw.name in links_down:
                state = "NotConnected"
            elif sa and sa.installed_children >= {c[0] for c in t.children}:
                state = "Connected"
            elif sa and sa.ike_state in ("CONNECTING", "ESTABLISHED", "REKEYING") and (
                    sa.peer_answered or not t.initiator):
                state = "Connecting"
            else:
                state = "NotConnected"
            reason, evidence = "", []
            if state != "Connected" and with_reasons:
                reason, evidence = (down_reason, []) if down_reason else diagnose(lab, gw, t)
            result.append(ConnectionStatus(
                gateway=gw.name, vnet=t.vnet, local_site=t.local_site, connectivity_state=state,
                ingress_bytes=earlier_in + (sa.bytes_in if sa else 0),
                egress_bytes=earlier_out + (sa.bytes_out if sa else 0),
                last_connection_established=(connected_at.get((gw.name, t.conn_id))
                                             or _established_at(sa.established_seconds_ago))
                if sa and sa.child_installed else None,
                ike_version=t.ike_version, dataplane=lab.dataplane, remote_address=str(t.remote_ip),
                cipher=sa.encryption if sa else None, reason=reason, evidence=evidence,
                fault=fault_of(reason) if reason else None, nat_traversal=_nat_seen(lab, answers, t, sa)))
    return result


def expected_up(lab: Lab) -> set[tuple[str, str]]:
    """(gateway, local site) of every keyed, connected tunnel end: what `up` promises to bring up."""
    return {(gw.name, t.local_site) for gw in lab.topology.gateways for t in gw.tunnels
            if t.shared_key and not lab.disconnected(gw.name, t.local_site)}
