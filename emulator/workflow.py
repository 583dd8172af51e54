"""The classic workflow on a running lab, modelled on the Service Management cmdlets
(Set/Get-AzureVNetGatewayKey, Get-AzureVNetGateway, Get-AzureVNetConnection,
Set-AzureVNetGateway -Connect/-Disconnect, and the walkthrough's "Update local sites" step).

Every change is recorded in the lab's changes file, re-rendered into the affected gateways'
configs and reloaded over vici into the running daemons: nothing else restarts.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from ipaddress import IPv4Address, ip_address

from netns import ops

from . import gateways
from .lab import Changes, Lab, changing, load_gateway, open_lab
from .plan import KEY_RE
from .problems import UsageError
from .render import render_gateway, write_rendered
from .rules import gateway_ip_problems
from .status import ConnectionStatus, collect
from .topology import GatewayNode, Topology, TunnelEnd

REINITIATE_MS = 5000


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


def _reload(lab: Lab, gw: GatewayNode) -> None:
    write_rendered([render_gateway(gw, lab.gw_dir(gw), lab.dataplane)])
    load_gateway(lab, gw)


def _restart(lab: Lab, gw: GatewayNode, end: TunnelEnd) -> None:
    """Drop the connection's SAs and initiate again from this gateway, waiting a few seconds."""
    directory = lab.gw_dir(gw)
    gateways.terminate(directory, end.conn_id)
    if end.shared_key is not None and not lab.disconnected(gw.name, end.local_site):
        gateways.initiate(directory, end.conn_id, [c[0] for c in end.children], REINITIATE_MS)


def _sync_routes(old: Topology, new: Topology, ns: str) -> None:
    before = {r for r in old.routes if r.ns == ns}
    after = {r for r in new.routes if r.ns == ns}
    with ops.Namespace(ns) as n:
        for r in before - after:
            n.del_route(r.dst, r.via, r.prohibit)
        for r in after - before:
            n.add_route(r.dst, r.via, r.prohibit)


def set_key(name: str | None, vnet: str, site: str, key: str) -> Lab:
    """Set-AzureVNetGatewayKey: reload the key into the running gateway, then record it. A gateway
    that does not answer gets nothing recorded (GatewayDown, exit 3)."""
    if not KEY_RE.match(key):
        raise UsageError("the key (masked) is not valid: a classic shared key is 1-128 letters and digits")
    with changing(name) as lab:
        _end(lab, vnet, site)
        changes = replace(lab.changes, keys={**lab.changes.keys, Changes.ref(vnet, site): key})
        new = lab.with_changes(changes)
        gw, end = _end(new, vnet, site)
        gateways.check_alive(new.gw_dir(gw))
        _reload(new, gw)
        _restart(new, gw, end)
        changes.write(lab.directory)
        return new


def get_key(name: str | None, vnet: str, site: str) -> str | None:
    lab = open_lab(name)
    _gw, end = _end(lab, vnet, site)
    return end.shared_key.reveal() if end.shared_key else None


def update_site(name: str | None, site: str, gateway_ip: str) -> tuple[Lab, list[str]]:
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
        moved = []
        for gw in new.topology.gateways:
            for end in gw.tunnels:
                if end.local_site == site and gw.kind == "vnet":
                    old_end = next(t for t in lab.topology.gateway(gw.name).tunnels if t.local_site == site)
                    if old_end.remote_ip != end.remote_ip:
                        moved.append((gw, end, old_end))
        for gw, _, _ in moved:  # every gateway answers before anything changes
            gateways.check_alive(new.gw_dir(gw))
        for gw, end, old_end in moved:
            _sync_routes(lab.topology, new.topology, gw.netns)
            _reload(new, gw)
            _restart(new, gw, end)
            notes.append(f"{gw.name} -> {site}: gateway address {old_end.remote_ip} -> {end.remote_ip}")
        if not moved and not notes:
            notes.append(f"nothing to do: {site}'s gateway address is {gateway_ip} already")
        changes.write(lab.directory)
        return new, notes


def set_connected(name: str | None, vnet: str, site: str, connect: bool) -> tuple[Lab, str | None]:
    """Set-AzureVNetGateway -Connect / -Disconnect for one VNet's connection to one site. Returns the lab
    and, when the connection already was in that state, a note that there was nothing to do."""
    with changing(name) as lab:
        gw, end = _end(lab, vnet, site)
        ref = Changes.ref(vnet, site)
        if (ref not in lab.changes.disconnected) == connect:
            return lab, f"nothing to do: {vnet}'s connection to {site} is {'connected' if connect else 'disconnected'} already"
        changes = replace(lab.changes, disconnected=lab.changes.disconnected - {ref} if connect
                          else lab.changes.disconnected | {ref})
        new = lab.with_changes(changes)
        gateways.check_alive(new.gw_dir(gw))
        if connect:
            _reload(new, gw)
            _restart(new, gw, end)
        else:
            gateways.terminate(new.gw_dir(gw), end.conn_id)
            gateways.unload(new.gw_dir(gw), end.conn_id)
        changes.write(lab.directory)
        return new, None


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
                "Reason": s.reason or None, "Evidence": s.evidence}


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


def gateway(name: str | None, vnet: str) -> dict:
    """Get-AzureVNetGateway: 404 (exit 2) when the VNet has no gateway."""
    lab = open_lab(name)
    v = next((v for v in lab.plan.vnets if v.name == vnet), None)
    if v is None:
        raise UsageError(f"no VNet '{vnet}' in lab '{lab.name}'; VNets: {', '.join(x.name for x in lab.plan.vnets)}")
    if v.gateway is None:
        raise UsageError(f"ResourceNotFound (404): no gateway exists for virtual network '{vnet}'")
    gw = lab.topology.gateway(vnet)
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
            "LastEventID": last.get("id"), "LastEventMessage": last.get("message"),
            "LastEventTimeStamp": last.get("time")}
