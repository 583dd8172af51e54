"""The validated plan: typed, immutable, and free of anything a config file could choke on.

Objects here are only ever built by `plan.load_plan` (from YAML) or `netcfg` (from XML), both of
which run every check in `rules` first.
"""

from __future__ import annotations

import math

from bisect import bisect_left, bisect_right
from dataclasses import dataclass, replace
from functools import cached_property
from enum import Enum
from ipaddress import IPv4Address, IPv4Network


class GatewayType(str, Enum):
    DYNAMIC = "DynamicRouting"  # route-based: IKEv2, VNet-to-VNet and multi-site allowed
    STATIC = "StaticRouting"  # policy-based: IKEv1, one site-to-site tunnel


class Sku(str, Enum):
    BASIC = "Basic"
    STANDARD = "Standard"
    HIGH_PERFORMANCE = "HighPerformance"

    @property
    def mbps(self) -> int:
        return 200 if self is Sku.HIGH_PERFORMANCE else 100

    @property
    def max_tunnels(self) -> int:
        return 30 if self is Sku.HIGH_PERFORMANCE else 10


class SharedKey:
    """A pre-shared key that never shows itself by accident: str() and repr() are masked."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __str__(self) -> str:
        return "********"

    __repr__ = __str__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SharedKey) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Gateway:
    type: GatewayType = GatewayType.DYNAMIC
    sku: Sku = Sku.STANDARD
    tcp_mss_clamp: int | None = None  # the MSS its forwarded TCP handshakes are clamped to (Azure asks 1350)


@dataclass(frozen=True)
class Subnet:
    name: str
    prefix: IPv4Network


@dataclass(frozen=True)
class VNet:
    name: str
    location: str
    address_space: tuple[IPv4Network, ...]
    subnets: tuple[Subnet, ...] = ()
    gateway_subnet: IPv4Network | None = None
    gateway: Gateway | None = None
    resource_group: str | None = None
    dns_servers: tuple[tuple[str, IPv4Address], ...] = ()


@dataclass(frozen=True)
class LocalSite:
    name: str
    address_space: tuple[IPv4Network, ...]
    gateway_ip: IPv4Address | None = None  # None means 'auto'
    behind_nat: bool = False  # its VPN device sits behind a NAT (masquerade): NAT-T happens


DPD_TIMEOUT = 45  # Azure's default dead-peer-detection timeout
BLOCKABLE = {"ike": "UDP 500", "natt": "UDP 4500", "esp": "IP protocol 50"}


@dataclass(frozen=True)
class PathConditions:
    """A gateway's link to the backbone, as the plan's `backbone:` section or `vnetlab impair` set it:
    what a real path does to IPsec (a small MTU, loss, delay, a firewall dropping IKE, NAT-T or ESP)."""

    mtu: int | None = None  # None: the link's default (1500)
    loss: float = 0.0  # percent of packets dropped, each direction
    delay_ms: int = 0
    jitter_ms: int = 0
    block: frozenset[str] = frozenset()  # of BLOCKABLE

    def to_json(self) -> dict:
        return {"mtu": self.mtu, "loss": self.loss, "delay_ms": self.delay_ms, "jitter_ms": self.jitter_ms,
                "block": sorted(self.block)}

    @staticmethod
    def from_json(data: dict) -> "PathConditions":
        return PathConditions(data["mtu"], data["loss"], data["delay_ms"], data["jitter_ms"], frozenset(data["block"]))

    def describe(self) -> str:
        if self.mtu == 0:  # reconcile.UNKNOWN_PATH: a change to it was under way when it was recorded
            return "unknown (a change was interrupted; the next command redoes it)"
        parts = ([f"mtu {self.mtu}"] if self.mtu else []) + ([f"loss {self.loss:g}%"] if self.loss else []) + (
            [f"delay {self.delay_ms} ms" + (f" ± {self.jitter_ms} ms" if self.jitter_ms else "")]
            if self.delay_ms else []) + ([f"blocks {', '.join(sorted(self.block))}"] if self.block else [])
        return ", ".join(parts) or "clean"


@dataclass(frozen=True)
class IpsecPolicy:
    """IKE and ESP parameters of one side of a tunnel, in strongSwan's proposal syntax."""

    suite: str
    ike_proposals: tuple[str, ...]
    esp_proposals: tuple[str, ...]
    ike_lifetime: int  # seconds
    child_lifetime: int  # seconds
    child_life_kbytes: int | None  # None: no volume limit
    dpd_delay: int  # seconds; 0 = no dead peer detection
    dpd_timeout: int = DPD_TIMEOUT  # seconds until a silent peer is declared dead (Azure: 45, 9-3600)

    @property
    def retransmit_timeout(self) -> float:
        """strongSwan's first retransmission timeout, so that its retransmissions (base 1.4, 3 tries:
        7.104 times this) take half the DPD timeout, at most the 14.2 s the lab used before."""
        return round(min(RETRANSMIT_BUDGET, self.dpd_timeout / 2) / RETRANSMIT_FACTOR, 3)

    def expiry_margin(self, lifetime: int) -> int:
        """Seconds from an SA's scheduled rekey to its hard expiry: strongSwan's 10 %, but at least
        one exchange's retransmissions, so that a rekey whose message was lost, or that collided with
        the peer's, completes before the old SA expires (10 s lifetimes lost pings in CI otherwise)."""
        return max(lifetime // 10, math.ceil(RETRANSMIT_FACTOR * self.retransmit_timeout))


RETRANSMIT_FACTOR = 1 + 1.4 + 1.4 ** 2 + 1.4 ** 3  # retransmit_base 1.4, retransmit_tries 3
RETRANSMIT_BUDGET = 2.0 * RETRANSMIT_FACTOR  # 14.2 s: a silent peer (the walkthrough's dummy) fails fast


def dpd_delay_for(timeout: int) -> int:
    """The DPD interval that declares a silent peer dead within `timeout`: charon checks every
    `delay` seconds for inbound traffic, so a failure just after a check is noticed after up to
    two delays, then the retransmissions run."""
    budget = min(RETRANSMIT_BUDGET, timeout / 2)
    return max(1, int((timeout - budget) / 2))


@dataclass(frozen=True)
class Connection:
    vnet: str
    local_site: str
    ike_version: int
    ipsec: IpsecPolicy
    shared_key: SharedKey | None = None

    @property
    def name(self) -> str:
        return f"{self.vnet}->{self.local_site}"


@dataclass(frozen=True)
class UserCheck:
    """One of the plan's own `tests:`: a probe `verify` runs beside the checks it derives."""

    name: str
    src: str  # a test host node, e.g. "TestVNet1/default"
    dst: str  # a test host node, or an IPv4 address
    proto: str  # icmp | tcp | udp
    port: int | None  # tcp and udp: the destination host answers on it during verify
    expect: str  # reach | blocked
    disconnect: tuple[str, str] | None = None  # during: this (VNet, local site) connection is disconnected


@dataclass(frozen=True)
class Plan:
    name: str
    vnets: tuple[VNet, ...]
    local_sites: tuple[LocalSite, ...]
    connections: tuple[Connection, ...] = ()
    source: str = "<plan>"
    tests: tuple[UserCheck, ...] = ()
    backbone: tuple[tuple[str, PathConditions], ...] = ()  # (gateway: VNet or on-premises site, conditions)

    def path(self, gateway: str) -> PathConditions:
        return dict(self.backbone).get(gateway, PathConditions())

    def with_path(self, gateway: str, conditions: PathConditions) -> "Plan":
        rest = tuple((g, c) for g, c in self.backbone if g != gateway)
        return replace(self, backbone=rest + (((gateway, conditions),) if conditions != PathConditions() else ()))

    def vnet(self, name: str) -> VNet:
        return next(v for v in self.vnets if v.name == name)

    def site(self, name: str) -> LocalSite:
        return next(s for s in self.local_sites if s.name == name)

    def connection(self, vnet: str, site: str) -> Connection | None:
        return self._connections.get((vnet, site))

    def vnet_of_site(self, site: LocalSite) -> VNet | None:
        """The VNet this local site stands for (VNet-to-VNet), or None (an on-premises site).

        A site stands for a VNet when it covers all of the VNet's address space; it may cover more
        (real netcfg files do: a /24 site for a /25 VNet), and IKEv2 narrows the selectors."""
        return self._site_vnets.get(site.name)

    @cached_property
    def _connections(self) -> dict[tuple[str, str], Connection]:
        found: dict[tuple[str, str], Connection] = {}
        for c in self.connections:
            found.setdefault((c.vnet, c.local_site), c)
        return found

    def vnets_overlapping(self, nets: tuple[IPv4Network, ...]) -> list[VNet]:
        """The VNets with a prefix that overlaps one of `nets`, in plan order. Two prefixes overlap
        when one holds the other: those a net holds are a run of the sorted prefixes (bisection),
        and those that hold it are among its 32 supernets, looked up by address and length.
        Comparing every site with every VNet took 5 s of a 1,000-VNet plan's validation."""
        starts, prefixes = self._prefixes
        found: set[int] = set()
        for net in nets:
            lo, hi = int(net.network_address), int(net.broadcast_address)
            found.update(i for _start, _end, i in prefixes[bisect_left(starts, lo):bisect_right(starts, hi)])
            for length in range(net.prefixlen):
                found.update(self._prefix_owners.get((lo & (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF, length), ()))
        return [self.vnets[i] for i in sorted(found)]

    @cached_property
    def _prefixes(self) -> tuple[list[int], list[tuple[int, int, int]]]:
        """Every VNet prefix as (first address, last address, VNet index), sorted, with the first
        addresses alone for bisection: the prefixes inside a range are one contiguous run."""
        prefixes = sorted((int(n.network_address), int(n.broadcast_address), i)
                          for i, v in enumerate(self.vnets) for n in v.address_space)
        return [p[0] for p in prefixes], prefixes

    @cached_property
    def _prefix_owners(self) -> dict[tuple[int, int], list[int]]:
        owners: dict[tuple[int, int], list[int]] = {}
        for i, v in enumerate(self.vnets):
            for n in v.address_space:
                owners.setdefault((int(n.network_address), n.prefixlen), []).append(i)
        return owners

    @cached_property
    def _site_vnets(self) -> dict[str, VNet]:
        """Site name -> the one VNet it covers entirely. Found by bisection (_prefixes): this stays
        fast for plans of hundreds of VNets (a scan per site and VNet made validation cubic)."""
        starts, prefixes = self._prefixes
        result: dict[str, VNet] = {}
        for site in self.local_sites:
            covered: dict[int, set[tuple[int, int]]] = {}
            for sp in site.address_space:
                lo, hi = int(sp.network_address), int(sp.broadcast_address)
                for start, end, i in prefixes[bisect_left(starts, lo):bisect_right(starts, hi)]:
                    if end <= hi:
                        covered.setdefault(i, set()).add((start, end))
            full = [i for i, found in covered.items() if len(found) == len(set(self.vnets[i].address_space))]
            if len(full) == 1:
                result[site.name] = self.vnets[full[0]]
        return result

    def with_key(self, vnet: str, site: str, key: SharedKey | None) -> Plan:
        return replace(self, connections=tuple(replace(c, shared_key=key) if (c.vnet, c.local_site) == (vnet, site)
                                               else c for c in self.connections))

    def with_clamp(self, vnet: str, mss: int | None) -> Plan:
        return replace(self, vnets=tuple(replace(v, gateway=replace(v.gateway, tcp_mss_clamp=mss))
                                         if v.name == vnet and v.gateway else v for v in self.vnets))

    def with_gateway_ip(self, site: str, ip: IPv4Address | None) -> Plan:
        return replace(self, local_sites=tuple(replace(s, gateway_ip=ip) if s.name == site else s
                                               for s in self.local_sites))


# Classic defaults (azure-classic-facts.md). "classic" is the 2016 table exactly; "gcm-first"
# is the later revision (GCM-AES256 first, phase 1 at 28,800 s), which also is what makes the
# tunnel fastest on both data planes, and so the default.
SUITES = ("gcm-first", "classic")


def default_policy(gateway_type: GatewayType, suite: str = "gcm-first") -> IpsecPolicy:
    route_based = gateway_type is GatewayType.DYNAMIC
    if route_based:
        ike = ["aes256-sha1-modp1024", "aes256-sha256-modp1024", "3des-sha1-modp1024", "3des-sha256-modp1024"]
        esp = ["aes256-sha1-modp1024", "aes128-sha1-modp1024", "3des-sha1-modp1024"]  # PFS group 2
    else:
        ike = ["aes256-sha1-modp1024", "aes128-sha1-modp1024", "3des-sha1-modp1024"]
        esp = ["aes256-sha1", "aes128-sha1", "3des-sha1"]  # no PFS
    if suite == "gcm-first":
        if route_based:
            ike.insert(0, "aes256gcm16-prfsha256-modp1024")
            esp.insert(0, "aes256gcm16-modp1024")
        else:
            esp.insert(0, "aes256gcm16")  # IKEv1 has no AEAD for IKE itself
        ike_lifetime = 28800
        child_lifetime = 27000 if route_based else 3600
    else:
        ike_lifetime = 10800 if route_based else 28800
        child_lifetime = 3600
    return IpsecPolicy(
        suite=suite,
        ike_proposals=tuple(ike),
        esp_proposals=tuple(esp),
        ike_lifetime=ike_lifetime,
        child_lifetime=child_lifetime,
        child_life_kbytes=None if route_based else 102_400_000,
        dpd_delay=dpd_delay_for(DPD_TIMEOUT) if route_based else 0,
    )
