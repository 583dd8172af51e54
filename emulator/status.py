"""Connection state in the classic vocabulary (Get-AzureVNetConnection), read over vici, and the
one-line reason a connection is not Connected, backed by the daemons' own log lines."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from . import gateways
from .lab import Lab
from .topology import GatewayNode, TunnelEnd

# (marker in a charon log line, the cause it proves) — strongSwan's net2net-psk-fail tests check these lines
MARKERS = (
    ("MAC mismatched", "pre-shared key mismatch: {side} checked the peer's AUTH payload against its key and "
                       "it did not match (MAC mismatched)"),
    ("AUTHENTICATION_FAILED", "pre-shared key mismatch: the peer answered AUTHENTICATION_FAILED"),
    ("decryption failed", "pre-shared key mismatch (IKEv1 main mode): {side} could not decrypt the peer's "
                          "payloads (invalid HASH_V1/ID_V1 payload length, decryption failed)"),
    ("NO_PROPOSAL_CHOSEN", "proposal mismatch: the two sides share no IKE or ESP proposal (NO_PROPOSAL_CHOSEN)"),
    ("no acceptable proposal", "proposal mismatch: the two sides share no IKE or ESP proposal"),
    ("TS_UNACCEPTABLE", "traffic selectors refused (TS_UNACCEPTABLE): the local site's address space does not "
                        "match the peer VNet's"),
    ("no shared key found", "key not set on {side}"),
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

    def as_dict(self) -> dict:
        return asdict(self)


def _log_tail(directory: Path) -> list[str]:
    path = directory / "charon.log"
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, path.stat().st_size - LOG_TAIL))
            return fh.read().decode(errors="replace").splitlines()
    except OSError:
        return []


def _peer(lab: Lab, t: TunnelEnd) -> tuple[GatewayNode, TunnelEnd] | None:
    for gw in lab.topology.gateways:
        if gw.public_ip == t.remote_ip:
            for other in gw.tunnels:
                if other.remote_ip == t.local_ip:
                    return gw, other
            return gw, None  # type: ignore[return-value]
    return None


def diagnose(lab: Lab, gw: GatewayNode, t: TunnelEnd) -> tuple[str, list[str]]:
    """Why this tunnel end is not Connected: facts of the plan first, then the daemons' logs."""
    peer = _peer(lab, t)
    if t.shared_key is None:
        return f"key not set on {gw.name} for {t.local_site} (vnetlab set-key)", []
    if not t.peer_in_lab or peer is None:
        return (f"peer unreachable: no gateway answers at {t.remote_ip} (no answer to IKE_SA_INIT); "
                f"update local site {t.local_site}'s gateway_ip (vnetlab update-site)", [])
    peer_gw, peer_end = peer
    if peer_end is None:
        return f"{peer_gw.name} has no connection back to {gw.name}: nothing answers this tunnel there", []
    if peer_end.shared_key is None:
        return f"key not set on {peer_gw.name} for {peer_end.local_site}", []
    found: list[tuple[str, str, str]] = []  # (time-sortable line, cause, evidence)
    for side, directory, names in ((gw.name, lab.gw_dir(gw), (t.conn_id,)),
                                   (peer_gw.name, lab.gw_dir(peer_gw), (peer_end.conn_id,))):
        for line in _log_tail(directory):
            if not any(f"<{n}|" in line for n in names) and str(t.remote_ip) not in line \
                    and str(t.local_ip) not in line:
                continue
            for marker, cause in MARKERS:
                if marker in line:
                    found.append((line[:19], cause.format(side=side), f"{side}: {line.strip()}"))
    if found:
        found.sort(key=lambda f: f[0])
        latest = found[-1]
        evidence = [f[2] for f in found if f[1] == latest[1]][-4:]
        return latest[1], evidence
    return "not established yet", []


def _established_at(seconds_ago: int | None) -> str | None:
    if seconds_ago is None:
        return None
    at = datetime.now(timezone.utc) - timedelta(seconds=seconds_ago)
    return at.isoformat(timespec="seconds")


def collect(lab: Lab, with_reasons: bool = True) -> list[ConnectionStatus]:
    result = []
    for gw in lab.topology.gateways:
        try:
            sas = gateways.list_sas(lab.gw_dir(gw))
            down_reason = ""
        except (ConnectionError, OSError):
            sas, down_reason = {}, f"gateway daemon of {gw.name} is not running (vnetlab down, then up)"
        for t in gw.tunnels:
            sa = sas.get(t.conn_id)
            if sa and sa.installed_children >= {c[0] for c in t.children}:
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
                ingress_bytes=sa.bytes_in if sa else 0, egress_bytes=sa.bytes_out if sa else 0,
                last_connection_established=_established_at(sa.established_seconds_ago)
                if sa and sa.child_installed else None,
                ike_version=t.ike_version, dataplane=lab.dataplane, remote_address=str(t.remote_ip),
                cipher=sa.encryption if sa else None, reason=reason, evidence=evidence))
    return result


def expected_up(lab: Lab) -> set[tuple[str, str]]:
    """(gateway, local site) of every keyed tunnel end: what `up` promises to bring up."""
    return {(gw.name, t.local_site) for gw in lab.topology.gateways for t in gw.tunnels if t.shared_key}
