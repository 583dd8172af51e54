"""Plan → concrete lab: namespaces, veth links, addresses, routes and tunnel ends. Pure.

Layout (one lab):
- one namespace per VNet: its router and strongSwan gateway; the gateway's address in the
  GatewaySubnet lives on `lo`, its emulated public address (VIP) on the `bb` link;
- one test-host namespace per subnet, and per address space that holds no subnet (so
  10.12.0.0/16 is reachable too), each with a default route to the VNet router;
- one backbone namespace, the router all public addresses hang off (one /31 per gateway);
- one namespace per on-premises local site: its emulated VPN device, plus a test host per
  address space.
Namespace names are `<lab>.v.<vnet>[.<subnet>]`, `<lab>.s.<site>[.<n>]`, `<lab>.backbone`:
names cannot contain dots, so these never collide. Interfaces are created directly inside
the lab's namespaces and never exist in the host namespace, so short names cannot clash.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from .model import Connection, IpsecPolicy, LocalSite, PathConditions, Plan, SharedKey, Sku, VNet

VNET_PUBLIC = IPv4Network("203.0.113.0/24")  # emulated VIPs of VNet gateways (the first 128)
ONPREM_PUBLIC = IPv4Network("198.51.100.0/24")  # emulated on-premises VPN devices (the first 128)
# Labs that outgrow a /24 (128 /31 links) continue in the benchmarking range of RFC 2544, which
# like the documentation ranges is never routed on the Internet.
LARGE = IPv4Network("198.18.0.0/15")
# the link between a device behind NAT and its NAT router: shared address space (RFC 6598), as carriers use
NAT_INSIDE_ROUTER, NAT_INSIDE_DEVICE = IPv4Interface("100.64.0.1/30"), IPv4Interface("100.64.0.2/30")
VNET_PUBLIC_LARGE, ONPREM_PUBLIC_LARGE = LARGE.subnets(new_prefix=16)
PUBLIC_RANGES = (IPv4Network("192.0.2.0/24"), ONPREM_PUBLIC, VNET_PUBLIC, LARGE)
MAX_GATEWAYS = 128 + VNET_PUBLIC_LARGE.num_addresses // 2
HOST_OFFSET = 4  # Azure reserves the first four addresses of a subnet; the first VM gets .4


@dataclass(frozen=True)
class Veth:
    ns_a: str
    if_a: str
    addr_a: IPv4Interface
    ns_b: str
    if_b: str
    addr_b: IPv4Interface

    @property
    def mac_a(self) -> str:
        return _mac(self.ns_a, self.if_a)

    @property
    def mac_b(self) -> str:
        return _mac(self.ns_b, self.if_b)


def _mac(ns: str, ifname: str) -> str:
    """A fixed, locally administered MAC per interface: each link end knows its peer's without ARP."""
    digest = hashlib.blake2b(f"{ns}/{ifname}".encode(), digest_size=5).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest))


@dataclass(frozen=True)
class Route:
    ns: str
    dst: IPv4Network
    via: IPv4Address | None = None  # None with prohibit=True: refuse (fail-closed)
    prohibit: bool = False


@dataclass(frozen=True)
class Host:
    node: str  # what `vnetlab exec` calls it, e.g. "TestVNet1/default"
    netns: str
    owner: str  # VNet or local site name
    address: IPv4Address
    network: IPv4Network  # the subnet or address space it stands for


@dataclass(frozen=True)
class TunnelEnd:
    """One side of one IPsec tunnel, as one strongSwan connection on one gateway."""

    conn_id: str  # swanctl connection and child name on this gateway
    vnet: str  # classic names, for status
    local_site: str
    local_ip: IPv4Address
    remote_ip: IPv4Address
    local_ts: tuple[IPv4Network, ...]
    remote_ts: tuple[IPv4Network, ...]
    ike_version: int
    ipsec: IpsecPolicy
    shared_key: SharedKey | None
    initiator: bool
    peer_in_lab: bool  # False: the remote address is no lab gateway (e.g. the dummy 5.4.3.2)
    nat_public: IPv4Address | None = None  # behind a NAT: the address the peer sees (local_ip is inside)

    @property
    def identity(self) -> IPv4Address:
        """The address the peer knows this end by: its IKE identity, and what the peer's remote_ip is."""
        return self.nat_public or self.local_ip

    @property
    def children(self) -> tuple[tuple[str, tuple[IPv4Network, ...], tuple[IPv4Network, ...]], ...]:
        """(name, local_ts, remote_ts) per CHILD_SA. IKEv2 carries every prefix in one CHILD_SA;
        IKEv1 negotiates one selector pair per SA, so it needs one child per pair of prefixes."""
        if self.ike_version == 2:
            return ((self.conn_id, self.local_ts, self.remote_ts),)
        pairs = [(lt, rt) for lt in self.local_ts for rt in self.remote_ts]
        return tuple((f"{self.conn_id}-{i + 1}", (lt,), (rt,)) for i, (lt, rt) in enumerate(pairs))


@dataclass(frozen=True)
class GatewayNode:
    name: str  # VNet name, or local site name for an emulated on-premises device
    kind: str  # "vnet" | "onprem"
    netns: str
    public_ip: IPv4Address
    sku: Sku | None
    tunnels: tuple[TunnelEnd, ...]
    path: PathConditions = PathConditions()  # its backbone link's conditions
    mss_clamp: int | None = None  # MSS of the TCP handshakes it forwards, clamped
    nat_ns: str | None = None  # the NAT namespace between it and the backbone (an on-premises device behind NAT)

    @property
    def edge_ns(self) -> str:
        """The namespace at the gateway's end of its backbone link: its own, or its NAT's."""
        return self.nat_ns or self.netns

    @property
    def worker_threads(self) -> int:
        """charon's worker pool: strongSwan's default 16, and 4 more per tunnel, at most 48."""
        return min(48, 16 + 4 * len(self.tunnels))

    @property
    def retransmit_timeout(self) -> float:
        """One daemon, one retransmission setting: the one its shortest DPD timeout needs."""
        return min((t.ipsec.retransmit_timeout for t in self.tunnels), default=2.0)


@dataclass(frozen=True)
class Topology:
    lab: str
    backbone: str  # namespace of the backbone router
    namespaces: tuple[str, ...]  # in creation order
    nodes: tuple[tuple[str, str], ...]  # (node name, namespace)
    veths: tuple[Veth, ...]
    lo_addresses: tuple[tuple[str, IPv4Interface], ...]  # (namespace, address on lo)
    routes: tuple[Route, ...]
    forwarding: tuple[str, ...]  # namespaces that route
    gateways: tuple[GatewayNode, ...]
    hosts: tuple[Host, ...]
    nats: tuple[str, ...] = ()  # NAT namespaces: they masquerade what leaves on their "bb" link

    def netns_of(self, node: str) -> str | None:
        return dict(self.nodes).get(node)

    def gateway(self, name: str) -> GatewayNode:
        return next(g for g in self.gateways if g.name == name)

    def backbone_link(self, gw: GatewayNode) -> Veth:
        """The veth from the backbone router to the gateway (or to the NAT in front of it)."""
        return next(v for v in self.veths if v.ns_a == self.backbone and v.ns_b == gw.edge_ns)

    def peer_gateway(self, t: TunnelEnd) -> GatewayNode | None:
        """The lab gateway at this end's remote address, if any."""
        return next((g for g in self.gateways if g.public_ip == t.remote_ip), None)

    def peer_end(self, t: TunnelEnd) -> TunnelEnd | None:
        """The tunnel end facing this one: on the peer gateway, pointing back at this address."""
        peer = self.peer_gateway(t)
        return next((e for e in peer.tunnels if e.remote_ip == t.identity), None) if peer else None


def _pair(small: IPv4Network, large: IPv4Network, index: int) -> tuple[IPv4Interface, IPv4Interface]:
    """The index-th /31 link (backbone side, gateway side): in the /24 first, then in the large range."""
    base, index = (small, index) if index < small.num_addresses // 2 else (large, index - small.num_addresses // 2)
    low = base.network_address + 2 * index
    return IPv4Interface(f"{low}/31"), IPv4Interface(f"{low + 1}/31")


def vnet_links(plan: Plan) -> dict[str, tuple[IPv4Interface, IPv4Interface]]:
    """Each VNet gateway's backbone link, in plan order; its gateway side is the emulated VIP."""
    return {v.name: _pair(VNET_PUBLIC, VNET_PUBLIC_LARGE, i) for i, v in enumerate(x for x in plan.vnets if x.gateway)}


def _router_and_host(net: IPv4Network) -> tuple[IPv4Interface, IPv4Interface]:
    return (IPv4Interface(f"{net.network_address + 1}/{net.prefixlen}"),
            IPv4Interface(f"{net.network_address + HOST_OFFSET}/{net.prefixlen}"))


class _Builder:
    def __init__(self, plan: Plan):
        self.plan = plan
        self.lab = plan.name
        self.namespaces: list[str] = []
        self.nodes: list[tuple[str, str]] = []
        self.veths: list[Veth] = []
        self.lo: list[tuple[str, IPv4Interface]] = []
        self.routes: list[Route] = []
        self.forwarding: list[str] = []
        self.nats: list[str] = []
        self.hosts: list[Host] = []
        self.backbone = f"{self.lab}.backbone"
        self.vip = vnet_links(plan)
        used = {c.local_site for c in plan.connections}
        onprem = [s for s in plan.local_sites if plan.vnet_of_site(s) is None and s.name in used]
        self.device_ip = {s.name: _pair(ONPREM_PUBLIC, ONPREM_PUBLIC_LARGE, i) for i, s in enumerate(onprem)}
        self.lab_addresses = {pair[1].ip for pair in [*self.vip.values(), *self.device_ip.values()]}

    def add_ns(self, node: str, ns: str) -> None:
        self.namespaces.append(ns)
        self.nodes.append((node, ns))

    def build(self) -> Topology:
        self.add_ns("backbone", self.backbone)
        self.forwarding.append(self.backbone)
        gateways = []
        for vnet in self.plan.vnets:
            gateways.extend(self.vnet(vnet))
        for site in self.plan.local_sites:
            if site.name in self.device_ip:
                gateways.append(self.onprem(site))
        return Topology(lab=self.lab, backbone=self.backbone, namespaces=tuple(self.namespaces), nodes=tuple(self.nodes),
                        veths=tuple(self.veths), lo_addresses=tuple(self.lo), routes=tuple(self.routes),
                        forwarding=tuple(self.forwarding), gateways=tuple(gateways), hosts=tuple(self.hosts),
                        nats=tuple(self.nats))

    def lan(self, owner: str, router_ns: str, ifname: str, label: str, net: IPv4Network) -> None:
        """A test host on its own namespace, linked to the router, default route to it."""
        ns = f"{router_ns}.{label}"
        node = f"{owner}/{label}"
        self.add_ns(node, ns)
        router, host = _router_and_host(net)
        self.veths.append(Veth(router_ns, ifname, router, ns, "eth0", host))
        self.routes.append(Route(ns, IPv4Network("0.0.0.0/0"), router.ip))
        self.hosts.append(Host(node, ns, owner, host.ip, net))

    def uplink(self, ns: str, via: IPv4Address, tunnels: list[TunnelEnd]) -> None:
        """Routes over the gateway's link ("bb") toward the backbone: to public addresses only, and a
        prohibit route per remote address space: without an installed SA, traffic is dropped here."""
        for rng in PUBLIC_RANGES:
            self.routes.append(Route(ns, rng, via))
        outside = sorted({t.remote_ip for t in tunnels if not any(t.remote_ip in r for r in PUBLIC_RANGES)})
        for addr in outside:
            self.routes.append(Route(ns, IPv4Network(f"{addr}/32"), via))
        for net in sorted({n for t in tunnels for n in t.remote_ts}):
            self.routes.append(Route(ns, net, None, prohibit=True))

    def vnet(self, vnet: VNet) -> list[GatewayNode]:
        ns = f"{self.lab}.v.{vnet.name}"
        self.add_ns(vnet.name, ns)
        self.forwarding.append(ns)
        for i, subnet in enumerate(vnet.subnets):
            self.lan(vnet.name, ns, f"s{i}", subnet.name, subnet.prefix)
        inside = [s.prefix for s in vnet.subnets] + ([vnet.gateway_subnet] if vnet.gateway_subnet else [])
        for j, space in enumerate(vnet.address_space):
            if not any(p.subnet_of(space) for p in inside):
                self.lan(vnet.name, ns, f"x{j}", f"space{j + 1}", space)
        if not vnet.gateway or not vnet.gateway_subnet:
            return []
        gs = vnet.gateway_subnet
        self.lo.append((ns, IPv4Interface(f"{gs.network_address + HOST_OFFSET}/{gs.prefixlen}")))
        tunnels = [self.vnet_end(vnet, c) for c in self.plan.connections if c.vnet == vnet.name]
        index = list(self.vip).index(vnet.name)
        self.veths.append(Veth(self.backbone, f"g{index}", self.vip[vnet.name][0], ns, "bb", self.vip[vnet.name][1]))
        self.uplink(ns, self.vip[vnet.name][0].ip, tunnels)
        return [GatewayNode(vnet.name, "vnet", ns, self.vip[vnet.name][1].ip, vnet.gateway.sku, tuple(tunnels),
                            self.plan.path(vnet.name), vnet.gateway.tcp_mss_clamp)]

    def remote_ip(self, site: LocalSite) -> IPv4Address:
        peer = self.plan.vnet_of_site(site)
        if peer is None:  # on-premises: always the emulated device, whatever the plan's real address
            return self.device_ip[site.name][1].ip
        if site.gateway_ip is None:
            return self.vip[peer.name][1].ip
        return site.gateway_ip

    def vnet_end(self, vnet: VNet, conn: Connection) -> TunnelEnd:
        site = self.plan.site(conn.local_site)
        peer = self.plan.vnet_of_site(site)
        mirror = None
        if peer is not None:
            mirror = next((self.plan.connection(peer.name, s.name) for s in self.plan.local_sites
                           if self.plan.vnet_of_site(s) is vnet and self.plan.connection(peer.name, s.name)), None)
        # a device behind a NAT initiates: the NAT has no mapping for anyone else's first packet
        initiator = conn.shared_key is not None and not site.behind_nat and (
            mirror is None or mirror.shared_key is None or vnet.name < mirror.vnet)
        remote = self.remote_ip(site)
        return TunnelEnd(conn_id=site.name, vnet=vnet.name, local_site=site.name,
                         local_ip=self.vip[vnet.name][1].ip, remote_ip=remote,
                         local_ts=vnet.address_space, remote_ts=site.address_space,
                         ike_version=conn.ike_version, ipsec=conn.ipsec, shared_key=conn.shared_key,
                         initiator=initiator, peer_in_lab=remote in self.lab_addresses)

    def onprem(self, site: LocalSite) -> GatewayNode:
        ns = f"{self.lab}.s.{site.name}"
        self.add_ns(site.name, ns)
        self.forwarding.append(ns)
        for j, space in enumerate(site.address_space):
            self.lan(site.name, ns, f"x{j}", f"space{j + 1}", space)
        public = self.device_ip[site.name][1].ip
        local = NAT_INSIDE_DEVICE.ip if site.behind_nat else public
        tunnels = []
        for conn in self.plan.connections:
            if conn.local_site != site.name:
                continue
            vnet = self.plan.vnet(conn.vnet)
            tunnels.append(TunnelEnd(conn_id=vnet.name, vnet=vnet.name, local_site=site.name,
                                     local_ip=local, remote_ip=self.vip[vnet.name][1].ip,
                                     local_ts=site.address_space, remote_ts=vnet.address_space,
                                     ike_version=conn.ike_version, ipsec=conn.ipsec, shared_key=conn.shared_key,
                                     initiator=site.behind_nat and conn.shared_key is not None, peer_in_lab=True,
                                     nat_public=public if site.behind_nat else None))
        index = list(self.device_ip).index(site.name)
        nat_ns = None
        if site.behind_nat:
            nat_ns = self.nat(site, ns, index)
            self.uplink(ns, NAT_INSIDE_ROUTER.ip, tunnels)
        else:
            self.veths.append(Veth(self.backbone, f"o{index}", self.device_ip[site.name][0], ns, "bb",
                                   self.device_ip[site.name][1]))
            self.uplink(ns, self.device_ip[site.name][0].ip, tunnels)
        return GatewayNode(site.name, "onprem", ns, public, None, tuple(tunnels), self.plan.path(site.name),
                           nat_ns=nat_ns)

    def nat(self, site: LocalSite, device_ns: str, index: int) -> str:
        """A NAT router between the device and the backbone: the device's link ("bb") ends in it,
        and it masquerades what leaves toward the backbone behind the site's public address."""
        ns = f"{device_ns}.nat"
        self.add_ns(f"{site.name}/nat", ns)
        self.forwarding.append(ns)
        self.nats.append(ns)
        bb_side, public = self.device_ip[site.name]
        self.veths.append(Veth(self.backbone, f"o{index}", bb_side, ns, "bb", public))
        self.veths.append(Veth(device_ns, "bb", NAT_INSIDE_DEVICE, ns, "in", NAT_INSIDE_ROUTER))
        for rng in PUBLIC_RANGES:
            self.routes.append(Route(ns, rng, bb_side.ip))
        return ns


def build_topology(plan: Plan) -> Topology:
    return _Builder(plan).build()
