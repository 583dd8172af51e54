"""The rules the classic platform enforced (azure-classic-facts.md), checked across objects.

Field syntax is already checked by `plan._Parser`; here every object is well-formed and the
question is whether the whole plan is one the classic platform would have accepted.
"""

from __future__ import annotations

from collections import defaultdict
from ipaddress import IPv4Address, IPv4Network, ip_address
from itertools import combinations

from .model import Connection, GatewayType, LocalSite, Plan, VNet
from .problems import Collector, connection_label, did_you_mean
from .topology import NAT_INSIDE_ROUTER, PUBLIC_RANGES, build_topology, vnet_links

MAX_VNETS = 1000  # what one 2-core machine with 24 GB holds (public links: topology.MAX_GATEWAYS)
MAX_ONPREM_SITES = 1000

# Addresses no network of a lab can use: the kernel treats them specially, or the lab itself does.
SPECIAL = (
    (IPv4Network("0.0.0.0/8"), "'this network' (0.0.0.0/8), which no host can use"),
    (IPv4Network("127.0.0.0/8"), "loopback (127.0.0.0/8): every host answers it itself"),
    (IPv4Network("169.254.0.0/16"), "link-local (169.254.0.0/16): never routed"),
    (IPv4Network("224.0.0.0/4"), "multicast (224.0.0.0/4): no unicast host or route there"),
    (IPv4Network("240.0.0.0/4"), "reserved (240.0.0.0/4, with the broadcast address 255.255.255.255)"),
) + tuple((r, f"one of the lab's own emulated public ranges ({r}): the backbone uses it") for r in PUBLIC_RANGES)


def special_range(net: IPv4Network) -> str | None:
    """Why a prefix cannot be a lab network's address space, or None."""
    return next((why for rng, why in SPECIAL if net.overlaps(rng)), None)


def _overlaps(a: tuple[IPv4Network, ...], b: tuple[IPv4Network, ...]) -> list[tuple[IPv4Network, IPv4Network]]:
    return [(x, y) for x in a for y in b if x.overlaps(y)]


def _fmt(nets: tuple[IPv4Network, ...]) -> str:
    return ", ".join(str(n) for n in nets)


def check_plan(plan: Plan, out: Collector) -> None:
    for vnet in plan.vnets:
        _check_vnet(vnet, out)
    _check_spaces(plan, out)
    _check_sites(plan, out)
    _check_connections(plan, out)
    if len(plan.vnets) > MAX_VNETS:
        out.error("plan", "vnets", f"{len(plan.vnets)} VNets; a lab holds at most {MAX_VNETS}")
    onprem = [s for s in plan.local_sites if plan.vnet_of_site(s) is None]
    if len(onprem) > MAX_ONPREM_SITES:
        out.error("plan", "local_sites", f"{len(onprem)} on-premises sites; a lab holds at most {MAX_ONPREM_SITES}")


def _check_spaces(plan: Plan, out: Collector) -> None:
    for kind, items in (("vnets", plan.vnets), ("local_sites", plan.local_sites)):
        for item in items:
            for net in item.address_space:
                why = special_range(net)
                if why:
                    out.error(f"{kind}.{item.name}", "address_space", f"{net} lies in {why}; use private "
                              "prefixes such as 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16")
    vips = {name: link[1].ip for name, link in vnet_links(plan).items()}
    for site in plan.local_sites:
        if site.gateway_ip is not None:
            for problem in gateway_ip_problems(plan, site, site.gateway_ip, vips):
                out.error(f"local_sites.{site.name}", "gateway_ip", problem)


def gateway_ip_problems(plan: Plan, site: LocalSite, ip: IPv4Address,
                        vips: dict[str, IPv4Address] | None = None) -> list[str]:
    """Why `ip` cannot be the VPN gateway address of `site` (empty when it can). Also used by update-site."""
    vips = vips if vips is not None else {name: link[1].ip for name, link in vnet_links(plan).items()}
    net = IPv4Network(f"{ip}/32")
    why = next((w for rng, w in SPECIAL[:5] if net.overlaps(rng)), None)
    if why:
        return [f"{ip} lies in {why}; a VPN gateway has a unicast public address"]
    problems = []
    inside = [x.name for x in (*plan.vnets, *plan.local_sites) if any(ip in n for n in x.address_space)]
    if inside:
        problems.append(f"{ip} is inside the address space of {inside[0]}; a VPN gateway's public address cannot "
                        "be a private address that the tunnels carry")
    own = sorted(c.vnet for c in plan.connections if c.local_site == site.name and vips.get(c.vnet) == ip)
    if own:
        problems.append(f"{ip} is {own[0]}'s own emulated gateway address, and {own[0]} connects to {site.name}: "
                        f"a gateway cannot build a tunnel to itself; give the peer's address (or 'auto')")
    return problems


def _check_vnet(v: VNet, out: Collector) -> None:
    obj = f"vnets.{v.name}"
    for a, b in combinations(v.address_space, 2):
        if a.overlaps(b):
            out.error(obj, "address_space", f"{a} overlaps {b}; the prefixes of one VNet must be disjoint")
    named = [(f"subnets.{s.name}", s.prefix) for s in v.subnets]
    if v.gateway_subnet:
        named.append(("gateway_subnet", v.gateway_subnet))
    for fld, prefix in named:
        if not any(prefix.subnet_of(space) for space in v.address_space):
            out.error(obj, fld, f"{prefix} is outside the VNet's address space ({_fmt(v.address_space)}); "
                      "a subnet must lie inside one of its prefixes")
    for (fa, a), (fb, b) in combinations(named, 2):
        if a.overlaps(b):
            out.error(obj, fb, f"{b} overlaps {fa} ({a}); subnets of one VNet must not overlap")
    if v.gateway and v.gateway_subnet is None:
        out.error(obj, "gateway_subnet", "missing: a VNet with a gateway needs a GatewaySubnet "
                  "(at least /29; /27 or /28 recommended), e.g. gateway_subnet: "
                  f"{_suggest_gateway_subnet(v)}")
    if v.gateway_subnet is not None:
        plen = v.gateway_subnet.prefixlen
        if plen > 29:
            out.error(obj, "gateway_subnet", f"{v.gateway_subnet} is too small: the GatewaySubnet must be /29 "
                      "or larger (/27 or /28 recommended)")
        elif plen == 29:
            out.warning(obj, "gateway_subnet", f"{v.gateway_subnet} works, but /27 or /28 is recommended to "
                        "leave room for future configurations")


def _suggest_gateway_subnet(v: VNet) -> str:
    used = [s.prefix for s in v.subnets]
    for space in v.address_space:
        if space.prefixlen > 27:
            continue
        for candidate in space.subnets(new_prefix=27):
            if not any(candidate.overlaps(u) for u in used):
                return str(candidate)
    return "<a free /27 inside the address space>"


RESERVED_NAMES = {"backbone"}  # the backbone router's node name in the lab


def _check_sites(plan: Plan, out: Collector) -> None:
    vnet_names = {v.name for v in plan.vnets}
    for name in sorted(vnet_names & RESERVED_NAMES):
        out.error(f"vnets.{name}", "name", f"'{name}' is reserved for the lab's backbone router; choose another name")
    for site in plan.local_sites:
        obj = f"local_sites.{site.name}"
        if plan.vnet_of_site(site) is None and (site.name in vnet_names or site.name in RESERVED_NAMES):
            what = "a VNet" if site.name in vnet_names else "the lab's backbone router"
            out.error(obj, "name", f"an on-premises site gets its own emulated VPN device and cannot share its name "
                      f"with {what}; rename it")
        inside = NAT_INSIDE_ROUTER.network
        for net in site.address_space if site.behind_nat else ():
            if net.overlaps(inside):
                out.error(obj, "address_space", f"{net} overlaps {inside}, the link between a device behind NAT and "
                          "its NAT router in the lab; use another prefix, or no behind_nat")
        for a, b in combinations(site.address_space, 2):
            if a.overlaps(b):
                out.error(obj, "address_space", f"{a} overlaps {b}; the prefixes of one site must be disjoint")
        mirror = plan.vnet_of_site(site)
        touched = [v for v in plan.vnets_overlapping(site.address_space) if v is not mirror]
        for vnet in touched:
            covers_all = all(any(n.subnet_of(s) for s in site.address_space) for n in vnet.address_space)
            what = "covers more than one VNet" if covers_all else f"names {vnet.name}'s range only partly"
            out.error(obj, "address_space", f"{what} ({_fmt(site.address_space)} against {vnet.name}'s "
                      f"{_fmt(vnet.address_space)}); a local site for a VNet must list that VNet's address "
                      f"space: [{_fmt(vnet.address_space)}]")


def _check_connections(plan: Plan, out: Collector) -> None:
    vnets = {v.name: v for v in plan.vnets}
    sites = {s.name: s for s in plan.local_sites}
    seen: dict[tuple[str, str], int] = {}
    valid: list[tuple[str, Connection, VNet, LocalSite]] = []
    for i, conn in enumerate(plan.connections):
        obj = connection_label(i, conn.vnet, conn.local_site)
        vnet, site = vnets.get(conn.vnet), sites.get(conn.local_site)
        if vnet is None:
            out.error(obj, "vnet", f"unknown VNet '{conn.vnet}'{did_you_mean(conn.vnet, vnets)}")
        if site is None:
            out.error(obj, "local_site", f"unknown local site '{conn.local_site}'{did_you_mean(conn.local_site, sites)}")
        if (conn.vnet, conn.local_site) in seen:
            out.error(obj, "local_site", f"duplicate: connections[{seen[(conn.vnet, conn.local_site)]}] already "
                      f"joins {conn.vnet} to {conn.local_site}")
            continue
        seen[(conn.vnet, conn.local_site)] = i
        if conn.shared_key is None:
            out.warning(obj, "shared_key", "no shared key yet: the tunnel stays down until one is set "
                        "(vnetlab set-key, like Set-AzureVNetGatewayKey)")
        if vnet is None or site is None:
            continue
        if vnet.gateway is None:
            out.error(obj, "vnet", f"{vnet.name} has no gateway; add 'gateway: {{type: DynamicRouting, sku: "
                      "Standard}' (we can set shared key only for virtual networks that have gateway)")
            continue
        valid.append((obj, conn, vnet, site))

    by_vnet: dict[str, list[tuple[str, Connection, VNet, LocalSite]]] = defaultdict(list)
    for item in valid:
        by_vnet[item[1].vnet].append(item)
    for name, items in by_vnet.items():
        _check_gateway(plan, vnets[name], items, out)
    _check_mirrors(plan, valid, out)


def _check_gateway(plan: Plan, vnet: VNet, items: list[tuple[str, Connection, VNet, LocalSite]],
                   out: Collector) -> None:
    gw = vnet.gateway
    assert gw is not None
    if len(items) > gw.sku.max_tunnels:
        out.error(f"vnets.{vnet.name}", "gateway.sku", f"{len(items)} tunnels on one {gw.sku.value} gateway; "
                  f"it allows at most {gw.sku.max_tunnels}"
                  + ("" if gw.sku.max_tunnels == 30 else " (HighPerformance allows 30)"))
    if gw.type is GatewayType.STATIC:
        if len(items) > 1:
            out.error(f"vnets.{vnet.name}", "gateway.type", f"{len(items)} tunnels on a StaticRouting gateway; "
                      "a static routing (policy-based) gateway allows one site-to-site tunnel: use DynamicRouting "
                      "for multi-site")
        for obj, _conn, _v, site in items:
            peer = plan.vnet_of_site(site)
            if peer is not None:
                out.error(obj, "vnet", f"VNet-to-VNet ({vnet.name} to {peer.name}) needs a DynamicRouting gateway; "
                          f"{vnet.name}'s is StaticRouting")
    spaces = [(site, site.address_space) for _o, _c, _v, site in items]
    for obj, _conn, _v, site in items:
        hit = _overlaps(site.address_space, vnet.address_space)
        if hit:
            out.error(obj, "local_site", f"{site.name}'s {hit[0][0]} overlaps {vnet.name}'s own {hit[0][1]}; the "
                      "address spaces of a VNet and the sites it connects to must not overlap")
    for (sa, a), (sb, b) in combinations(spaces, 2):
        hit = _overlaps(a, b)
        if hit:
            out.error(f"vnets.{vnet.name}", "connections", f"local sites {sa.name} and {sb.name} overlap "
                      f"({hit[0][0]} and {hit[0][1]}); sites that one VNet connects to must not overlap")
    peers: dict[str, str] = {}
    for obj, _conn, _v, site in items:
        peer = plan.vnet_of_site(site)
        if peer is None:
            continue
        if peer.name in peers:
            out.error(obj, "local_site", f"redundant tunnel: {vnet.name} already reaches {peer.name} through "
                      f"{peers[peer.name]}; redundant tunnels between a pair of VNets are not supported")
        peers[peer.name] = site.name


def _check_mirrors(plan: Plan, valid: list[tuple[str, Connection, VNet, LocalSite]], out: Collector) -> None:
    back_sites: dict[str, list[LocalSite]] = defaultdict(list)  # VNet name -> the sites standing for it
    for s in plan.local_sites:
        covered = plan.vnet_of_site(s)
        if covered is not None:
            back_sites[covered.name].append(s)
    for obj, conn, vnet, site in valid:
        peer = plan.vnet_of_site(site)
        if peer is None:
            continue
        if peer.gateway is None:
            out.error(obj, "local_site", f"{site.name} stands for {peer.name}, which has no gateway to connect to")
            continue
        sites_back = back_sites[vnet.name]
        mirror = next((c for c in (plan.connection(peer.name, s.name) for s in sites_back) if c is not None), None)
        if mirror is None:
            suggestion = sites_back[0].name if sites_back else f"a local site with {vnet.name}'s address space"
            out.warning(obj, "local_site", f"no mirror: {peer.name} has no connection back to {vnet.name}; add "
                        f"{{vnet: {peer.name}, local_site: {suggestion}}} or the tunnel cannot come up")
            continue
        if mirror.ike_version != conn.ike_version:
            out.warning(obj, "ike_version", f"IKEv{conn.ike_version} here but IKEv{mirror.ike_version} on "
                        f"{peer.name}'s side; the tunnel cannot come up")
        if conn.shared_key and mirror.shared_key and conn.shared_key != mirror.shared_key and conn.vnet < peer.name:
            out.warning(obj, "shared_key", f"differs from the key of {peer.name}'s connection to {mirror.local_site} "
                        "(both masked): the tunnel will fail authentication until both sides have the same key")
        if conn.vnet < peer.name:
            for key, what in (("ike_proposals", "IKE"), ("esp_proposals", "ESP")):
                if not proposals_intersect(getattr(conn.ipsec, key), getattr(mirror.ipsec, key)):
                    out.warning(obj, f"ipsec.{key}", f"no {what} proposal in common with {peer.name}'s side "
                                f"({', '.join(getattr(conn.ipsec, key))} against "
                                f"{', '.join(getattr(mirror.ipsec, key))}): the tunnel will fail with "
                                "NO_PROPOSAL_CHOSEN")


def _algorithms(proposal: str) -> dict[str, set[str]]:
    """A strongSwan proposal's algorithms by kind: encryption, integrity, prf, dh, esn."""
    kinds: dict[str, set[str]] = defaultdict(set)
    for token in proposal.split("-"):
        if token.startswith("prf"):
            kinds["prf"].add(token)
        elif token.startswith(("modp", "ecp", "curve")):
            kinds["dh"].add(token)
        elif token in ("esn", "noesn"):
            kinds["esn"].add(token)
        elif token.startswith(("sha", "md5")):
            kinds["integrity"].add(token)
        else:
            kinds["encryption"].add(token)
    return kinds


def proposals_intersect(ours: tuple[str, ...], theirs: tuple[str, ...]) -> bool:
    """Whether two proposal lists can agree: some pair shares an algorithm of every kind either names."""
    def agree(a: dict[str, set[str]], b: dict[str, set[str]]) -> bool:
        return all((a.get(k, set()) & b.get(k, set())) or (not a.get(k) and not b.get(k))
                   for k in ("encryption", "integrity", "dh")) and (
            not a.get("prf") or not b.get("prf") or bool(a["prf"] & b["prf"]))
    return any(agree(_algorithms(p), _algorithms(q)) for p in ours for q in theirs)


def check_user_tests(plan: Plan, out: Collector) -> None:
    """The plan's `tests:` name real test hosts (`from`), and hosts or IPv4 addresses (`to`)."""
    if not plan.tests:
        return
    hosts = [h.node for h in build_topology(plan).hosts]
    shown = ", ".join(hosts[:12]) + (", …" if len(hosts) > 12 else "")
    for i, test in enumerate(plan.tests):
        obj = f"tests[{i}] ({test.name})"
        if test.src not in hosts:
            out.error(obj, "from", f"'{test.src}' is no test host of this plan{did_you_mean(test.src, hosts)}; "
                      f"test hosts: {shown}")
        if test.dst not in hosts:
            try:
                ok = ip_address(test.dst).version == 4
            except ValueError:
                ok = False
            if not ok:
                out.error(obj, "to", f"'{test.dst}' is neither a test host of this plan nor an IPv4 address"
                          f"{did_you_mean(test.dst, hosts)}; test hosts: {shown}")
        if test.disconnect and plan.connection(*test.disconnect) is None:
            known = ", ".join(f"{c.vnet}/{c.local_site}" for c in plan.connections)
            out.error(obj, "during.disconnect", f"'{'/'.join(test.disconnect)}' is no connection of this plan; "
                      f"connections: {known}")
