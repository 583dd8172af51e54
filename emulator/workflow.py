"""The classic workflow on a running lab, modelled on the Service Management cmdlets
(Set/Get-AzureVNetGatewayKey, Get-AzureVNetGateway, Get-AzureVNetConnection,
Set-AzureVNetGateway -Connect/-Disconnect, and the walkthrough's "Update local sites" step).

Every change is recorded in the lab's changes file, re-rendered into the affected gateways'
configs and reloaded over vici into the running daemons: nothing else restarts.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import asdict, dataclass, field, replace
from ipaddress import IPv4Address, ip_address

from . import gateways
from netns.spawn import end_with_parent

from .executor import Executor, read_snapshot
from .events import record_event
from .lab import Changes, Lab, apply, changing, desired, open_lab, plan_change
from .model import PathConditions
from .plan import KEY_RE, MSS_RANGE, parse_path_conditions
from .problems import UsageError
from .reconcile import Action, StopDaemon, diff
from .rules import gateway_ip_problems
from .status import ConnectionStatus, collect
from .topology import GatewayNode, TunnelEnd

EVENT_RESET = 23405


def _end(lab: Lab, vnet: str, site: str) -> tuple[GatewayNode, TunnelEnd]:
    """The VNet-side tunnel end, or a clear refusal (exit 2) naming what would be valid."""
    vnets = {v.name: v for v in lab.plan.vnets}
    if vnet not in vnets:
        raise UsageError(f"no VNet '{vnet}' in lab '{lab.name}'; VNets: {', '.join(vnets)}")
    if vnets[vnet].gateway is None:
        raise UsageError(f"{vnet} has no gateway: we can set shared key only for virtual networks that have "
                         "gateway (add one to the plan)")
    gw = lab.topology.gateway(vnet)
    end = next((t for t in gw.tunnels if t.local_site == site), None)
    if end is None:
        sites = ", ".join(t.local_site for t in gw.tunnels) or "none"
        raise UsageError(f"local network site '{site}' is not connected to {vnet}; its sites: {sites}")
    return gw, end


@dataclass(frozen=True)
class Applied:
    """What a mutating command did (or, with --dry-run, would do)."""

    lab: Lab
    actions: list[Action]
    dry_run: bool
    notes: list[str] = field(default_factory=list)


def _change(lab: Lab, changes: Changes, dry_run: bool, notes: list[str] | None = None) -> Applied:
    """Desired state → pure diff → actions, run by the executor; the change is recorded only once applied."""
    new = lab.with_changes(changes)
    actions = plan_change(lab, new)
    if not dry_run:
        apply(new, actions)
    return Applied(new, actions, dry_run, notes or [])


def set_key(name: str | None, vnet: str, site: str, key: str, dry_run: bool = False) -> Applied:
    """Set-AzureVNetGatewayKey: reload the key into the running gateway, then record it. A gateway
    that does not answer gets nothing recorded (GatewayDown, exit 3)."""
    if not KEY_RE.match(key):
        raise UsageError("the key (masked) is not valid: a classic shared key is 1-128 letters and digits")
    with changing(name) as lab:
        _end(lab, vnet, site)
        return _change(lab, replace(lab.changes, keys={**lab.changes.keys, Changes.ref(vnet, site): key}), dry_run)


def get_key(name: str | None, vnet: str, site: str) -> str | None:
    lab = open_lab(name)
    _gw, end = _end(lab, vnet, site)
    return end.shared_key.reveal() if end.shared_key else None


def update_site(name: str | None, site: str, gateway_ip: str, dry_run: bool = False) -> Applied:
    """Point a local site at another gateway address; returns the lab and what changed."""
    with changing(name) as lab:
        sites = {s.name: s for s in lab.plan.local_sites}
        if site not in sites:
            raise UsageError(f"no local network site '{site}' in lab '{lab.name}'; sites: {', '.join(sites)}")
        if gateway_ip != "auto":
            try:
                address = ip_address(gateway_ip)
                if not isinstance(address, IPv4Address):
                    raise ValueError
            except ValueError:
                raise UsageError(f"--gateway-ip '{gateway_ip}' is not an IPv4 address (or 'auto')") from None
            problems = gateway_ip_problems(lab.plan, sites[site], address)
            if problems:
                raise UsageError(f"--gateway-ip {gateway_ip} for {site}: {problems[0]}")
        notes = []
        if lab.plan.vnet_of_site(sites[site]) is None:
            notes.append(f"{site} is an on-premises site: the lab emulates its VPN device at its own address, "
                         "so its connections do not change")
        changes = replace(lab.changes, gateway_ips={**lab.changes.gateway_ips, site: gateway_ip})
        new = lab.with_changes(changes)
        for gw in new.topology.gateways:
            if gw.kind != "vnet":
                continue
            for end in gw.tunnels:
                if end.local_site == site:
                    old_end = next(t for t in lab.topology.gateway(gw.name).tunnels if t.local_site == site)
                    if old_end.remote_ip != end.remote_ip:
                        notes.append(f"{gw.name} -> {site}: gateway address {old_end.remote_ip} -> {end.remote_ip}")
        if not notes:
            notes.append(f"nothing to do: {site}'s gateway address is {gateway_ip} already")
        return _change(lab, changes, dry_run, notes)


def set_connected(name: str | None, vnet: str, site: str, connect: bool, dry_run: bool = False) -> Applied:
    """Set-AzureVNetGateway -Connect / -Disconnect for one VNet's connection to one site. When the
    connection already was in that state, a note says there was nothing to do."""
    with changing(name) as lab:
        _end(lab, vnet, site)
        ref = Changes.ref(vnet, site)
        if (ref not in lab.changes.disconnected) == connect:
            state = "connected" if connect else "disconnected"
            return Applied(lab, [], dry_run, [f"nothing to do: {vnet}'s connection to {site} is {state} already"])
        return _change(lab, replace(lab.changes, disconnected=lab.changes.disconnected - {ref} if connect
                                    else lab.changes.disconnected | {ref}), dry_run)


def _device(lab: Lab, vnet: str | None, site: str | None) -> GatewayNode:
    """--vnet: a VNet's gateway; --site: an on-premises site's emulated VPN device."""
    if vnet is not None:
        return _gateway_of(lab, vnet)
    devices = {g.name: g for g in lab.topology.gateways if g.kind == "onprem"}
    if site not in devices:
        raise UsageError(f"no on-premises site '{site}' in lab '{lab.name}' (sites with a VPN device: "
                         f"{', '.join(devices) or 'none'}); a VNet's gateway: --vnet")
    return devices[site]


def set_link(name: str | None, vnet: str | None, site: str | None, up: bool, dry_run: bool = False) -> Applied:
    """Take a gateway's (or an on-premises device's) backbone link down, or bring it back: a link
    failure on demand. Down, the kernel drops the routes through it; up, the reconciler adds them again."""
    with changing(name) as lab:
        gw = _device(lab, vnet, site)
        if (gw.name not in lab.changes.links_down) == up:
            return Applied(lab, [], dry_run, [f"nothing to do: the backbone link of {gw.name} is {'up' if up else 'down'}"
                                              " already"])
        links = lab.changes.links_down - {gw.name} if up else lab.changes.links_down | {gw.name}
        return _change(lab, replace(lab.changes, links_down=links), dry_run)


def impair(name: str | None, vnet: str | None, site: str | None, fields: dict, clear: bool,
           dry_run: bool = False) -> Applied:
    """Set the conditions of a gateway's backbone link while the lab runs (the plan's `backbone:`
    section, live): the given fields replace the current ones; --clear makes the link clean."""
    with changing(name) as lab:
        gw = _device(lab, vnet, site)
        current = lab.plan.path(gw.name)
        if clear:
            conditions = PathConditions()
        else:
            merged = {k: sorted(v) if k == "block" else v for k, v in (asdict(current) | fields).items()}
            conditions = parse_path_conditions({k: v for k, v in merged.items() if v},  # 0 or []: not set
                                               f"--{'vnet' if vnet else 'site'} {gw.name}")
        if conditions == current:
            return Applied(lab, [], dry_run, [f"nothing to do: the backbone link of {gw.name} is {current.describe()}"])
        paths = {**lab.changes.paths, gw.name: conditions}
        return _change(lab, replace(lab.changes, paths=paths), dry_run,
                       [f"{gw.name}'s backbone link: {current.describe()} -> {conditions.describe()}"])


def clamp(name: str | None, vnet: str, mss: int | None, dry_run: bool = False) -> Applied:
    """Clamp the MSS of the TCP handshakes a VNet's gateway forwards (None: stop clamping): the
    plan's gateway.tcp_mss_clamp, live; what Azure asks of VPN devices when the path MTU is small."""
    low, high = MSS_RANGE
    if mss is not None and not low <= mss <= high:
        raise UsageError(f"--mss {mss} is not valid: give a whole number from {low} to {high} (Azure asks 1350)")
    with changing(name) as lab:
        gw = _gateway_of(lab, vnet)
        if gw.mss_clamp == mss:
            return Applied(lab, [], dry_run, [f"nothing to do: {vnet}'s gateway clamps "
                                              + (f"the TCP MSS at {mss} already" if mss else "nothing already")])
        return _change(lab, replace(lab.changes, clamps={**lab.changes.clamps, vnet: mss}), dry_run)


RESET_WAIT = 20.0  # seconds reset-gateway waits for the gateway's tunnels to be Connected again


def reset_gateway(name: str | None, vnet: str, dry_run: bool = False) -> tuple[Applied, dict]:
    """Reset-AzureVNetGateway: a deliberate restart of the gateway's daemon, through the reconciler
    (stop, then what runs without it is brought back to the desired state). Returns how long until
    every tunnel the gateway should hold was Connected again, and the outage a ping across it saw."""
    with changing(name) as lab:
        gw = _gateway_of(lab, vnet)
        applied = read_snapshot(lab.directory)
        actions = [StopDaemon(gw.name), *diff(applied.without_gateway(gw.name), desired(lab), lab.topology)]
        if dry_run:
            return Applied(lab, actions, True), {}
        wanted = {t.conn_id for t in gw.tunnels if t.shared_key and t.peer_in_lab
                  and not lab.disconnected(gw.name, t.local_site)}
        with OutageProbe(lab, gw) as probe:
            started = time.monotonic()
            Executor(lab).run(actions, applied)
            while True:
                sas = gateways.list_sas(lab.gw_dir(gw))
                back = all(c in sas and sas[c].child_installed for c in wanted)
                if back or time.monotonic() - started > RESET_WAIT:
                    break
                time.sleep(0.02)
            tunnels_back = time.monotonic() - started
        outage = probe.outage
        message = (f"The gateway {vnet} was reset (Reset-AzureVNetGateway): its daemon was restarted; "
                   + (f"its {len(wanted)} tunnel(s) were Connected again {tunnels_back:.2f} s after the stop"
                      if back else f"not every tunnel was Connected again within {RESET_WAIT:.0f} s")
                   + (f"; a ping across its tunnel to {probe.target} lost {outage:.2f} s." if outage is not None
                      else "."))
        for t in gw.tunnels:
            record_event(lab.directory, {"gateway": gw.name, "local_site": t.conn_id, "id": EVENT_RESET,
                                         "cause": "reset", "message": message,
                                         "to": "Connected" if sas.get(t.conn_id) and sas[t.conn_id].child_installed
                                         else "NotConnected"})
        return Applied(lab, actions, False, [message]), {
            "TunnelsBackSeconds": round(tunnels_back, 2) if back else None,
            "OutageSeconds": round(outage, 2) if outage is not None else None}


class OutageProbe:
    """A ping every 10 ms from a host behind the gateway to a host behind its first in-lab peer, for
    the length of a `with` block; `outage` is then the longest time without an answer (None when the
    gateway has no peer in the lab). The ping is this process's child, ended by its pid."""

    INTERVAL = 0.01

    def __init__(self, lab: Lab, gw: GatewayNode):
        self.outage: float | None = None
        self.proc = None
        peer = next((lab.topology.peer_gateway(t) for t in gw.tunnels if t.shared_key and t.peer_in_lab
                     and not lab.disconnected(gw.name, t.local_site)), None)
        src = next((h for h in lab.topology.hosts if h.owner == gw.name), None)
        dst = next((h for h in lab.topology.hosts if peer is not None and h.owner == peer.name), None)
        self.source, self.target = src, (dst.address if dst else None)

    def __enter__(self) -> "OutageProbe":
        if self.source is not None and self.target is not None:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.source.netns, "ping", "-n", "-D", "-i", str(self.INTERVAL), "-W", "1", str(self.target)],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, preexec_fn=end_with_parent)
            time.sleep(0.2)  # answers before the reset: the baseline
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        time.sleep(0.3)  # answers after: the outage has an end
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=5)
        stamps = [float(m.group(1)) for m in re.finditer(r"^\[(\d+\.\d+)\] \d+ bytes from", out, re.M)]
        gaps = [b - a for a, b in zip(stamps, stamps[1:])]
        self.outage = max(0.0, max(gaps, default=0.0) - self.INTERVAL) if len(stamps) > 1 else None


@dataclass(frozen=True)
class ConnectionReport:
    """Get-AzureVNetConnection, one entry per local network site."""

    status: ConnectionStatus
    last_event: dict | None

    def as_dict(self) -> dict:
        s, e = self.status, self.last_event or {}
        return {"LocalNetworkSiteName": s.local_site, "ConnectivityState": s.connectivity_state,
                "EgressBytesTransferred": s.egress_bytes, "IngressBytesTransferred": s.ingress_bytes,
                "LastConnectionEstablished": s.last_connection_established, "LastEventID": e.get("id"),
                "LastEventMessage": e.get("message"), "LastEventTimeStamp": e.get("time"),
                "NatTraversal": s.nat_traversal, "Reason": s.reason or None, "Fault": s.fault, "Evidence": s.evidence}


def connection(name: str | None, vnet: str) -> tuple[Lab, list[ConnectionReport]]:
    lab = open_lab(name)
    if vnet not in {v.name for v in lab.plan.vnets}:
        raise UsageError(f"no VNet '{vnet}' in lab '{lab.name}'; VNets: {', '.join(v.name for v in lab.plan.vnets)}")
    log = lab.events()
    reports = []
    for s in collect(lab):
        if s.gateway != vnet:
            continue
        mine = [e for e in log if e["gateway"] == vnet and e["local_site"] == s.local_site]
        reports.append(ConnectionReport(s, mine[-1] if mine else None))
    return lab, reports


def _gateway_of(lab: Lab, vnet: str) -> GatewayNode:
    """A VNet's gateway; 404 (exit 2) when the VNet has none, as in Azure."""
    v = next((v for v in lab.plan.vnets if v.name == vnet), None)
    if v is None:
        raise UsageError(f"no VNet '{vnet}' in lab '{lab.name}'; VNets: {', '.join(x.name for x in lab.plan.vnets)}")
    if v.gateway is None:
        raise UsageError(f"ResourceNotFound (404): no gateway exists for virtual network '{vnet}'")
    return lab.topology.gateway(vnet)


def gateway(name: str | None, vnet: str) -> dict:
    """Get-AzureVNetGateway: 404 (exit 2) when the VNet has no gateway."""
    lab = open_lab(name)
    gw = _gateway_of(lab, vnet)
    v = next(v for v in lab.plan.vnets if v.name == vnet)
    mine = [e for e in lab.events() if e["gateway"] == vnet]
    last = mine[-1] if mine else {}
    try:  # the daemon's own answer, not a constant
        gateways.check_alive(lab.gw_dir(gw))
        state = "Provisioned"
    except gateways.GatewayDown:
        state = "NotResponding (its supervisor restarts it; see LastEventMessage)"
    return {"VNetName": vnet, "State": state, "VIPAddress": str(gw.public_ip),
            "GatewayType": v.gateway.type.value, "GatewaySKU": v.gateway.sku.value,
            "DefaultSite": None, "DataPlane": lab.dataplane,
            "BandwidthMbps": v.gateway.sku.mbps if lab.sku_limit else None,
            "BackbonePath": gw.path.describe(), "BackboneLink": "down" if gw.name in lab.links_down() else "up",
            "TcpMssClamp": gw.mss_clamp,
            "LastEventID": last.get("id"), "LastEventMessage": last.get("message"),
            "LastEventTimeStamp": last.get("time")}
