"""The concrete lab a plan yields: addresses, names, routes, and the order `up` relies on."""

from ipaddress import IPv4Network

import pytest

from emulator.plan import load_plan
from emulator.topology import PUBLIC_RANGES, build_topology
from tests.conftest import PLANS

ALL = sorted(PLANS.glob("*.yaml"))


@pytest.mark.parametrize("plan_file", ALL, ids=lambda p: p.stem)
def test_every_veth_starts_in_a_namespace_created_before_its_peer(plan_file):
    topo = build_topology(load_plan(plan_file)[0])
    order = {ns: i for i, ns in enumerate(topo.namespaces)}
    assert all(order[v.ns_a] < order[v.ns_b] for v in topo.veths)
    assert all(len(name) <= 15 for v in topo.veths for name in (v.if_a, v.if_b))
    assert len(set(topo.namespaces)) == len(topo.namespaces)


@pytest.mark.parametrize("plan_file", ALL, ids=lambda p: p.stem)
def test_public_addresses_only_from_documentation_ranges(plan_file):
    topo = build_topology(load_plan(plan_file)[0])
    assert all(any(g.public_ip in r for r in PUBLIC_RANGES) for g in topo.gateways)
    backbone_links = [v for v in topo.veths if v.ns_a == topo.backbone]
    assert all(any(v.addr_a.ip in r for r in PUBLIC_RANGES) for v in backbone_links)


def test_default_plan_layout():
    topo = build_topology(load_plan(None)[0])
    vnet1 = topo.gateway("TestVNet1")
    assert str(vnet1.public_ip) == "203.0.113.1" and str(topo.gateway("TestVNet4").public_ip) == "203.0.113.3"
    assert topo.netns_of("TestVNet1/default") == "classic-vnet-to-vnet.v.TestVNet1.default"
    hosts = {h.node: str(h.address) for h in topo.hosts}
    assert hosts == {"TestVNet1/default": "10.11.0.4", "TestVNet1/space2": "10.12.0.4",
                     "TestVNet4/default": "10.41.0.4", "TestVNet4/space2": "10.42.0.4"}
    (t,) = vnet1.tunnels
    assert str(t.remote_ip) == "203.0.113.3" and t.initiator and t.peer_in_lab
    # fail-closed: the remote spaces are prohibited in the gateway's main table, no default route
    gw_routes = [r for r in topo.routes if r.ns == vnet1.netns]
    assert {str(r.dst) for r in gw_routes if r.prohibit} == {"10.41.0.0/16", "10.42.0.0/16"}
    assert IPv4Network("0.0.0.0/0") not in {r.dst for r in gw_routes}


def test_dummy_address_is_not_a_lab_peer(tmp_path):
    text = (PLANS / "classic-vnet-to-vnet.yaml").read_text().replace(
        "    gateway_ip: auto               # TestVNet4's", "    gateway_ip: 5.4.3.2  # TestVNet4's")
    (tmp_path / "p.yaml").write_text(text)
    topo = build_topology(load_plan(tmp_path / "p.yaml")[0])
    (t,) = topo.gateway("TestVNet1").tunnels
    assert str(t.remote_ip) == "5.4.3.2" and not t.peer_in_lab
    assert any(str(r.dst) == "5.4.3.2/32" for r in topo.routes if r.ns == topo.gateway("TestVNet1").netns)


@pytest.mark.parametrize("plan_file", ALL, ids=lambda p: p.stem)
def test_the_link_calls_name_only_interfaces_made_before_and_make_every_end(plan_file):
    """`up` sends each namespace's link calls to its netlink worker in this order: an interface a
    call names must exist by then, made by an earlier add_veth in its namespace or as a peer into
    it; every end gets its address and its peer as neighbour, and every end made as a peer is
    brought up (the end made where the veth is added is up from the start)."""
    from emulator.lab import link_calls

    topo = build_topology(load_plan(str(plan_file))[0])
    exists = {(ns, "lo") for ns in topo.namespaces}
    addresses, neighbours, up = set(), set(), set()
    for ns, calls in link_calls(topo):
        for method, args in calls:
            if method == "add_veth":
                ifname, _mac, peer_ns, peer_ifname, _peer_mac = args
                exists |= {(ns, ifname), (peer_ns, peer_ifname)}
                up.add((ns, ifname))
                continue
            assert (ns, args[0]) in exists, f"{method}{args} in {ns} before its interface was made"
            {"add_address": addresses, "add_neighbour": neighbours, "up": up}[method].add((ns, *args))
    for v in topo.veths:
        assert {(v.ns_a, v.if_a, v.addr_a), (v.ns_b, v.if_b, v.addr_b)} <= addresses
        assert {(v.ns_a, v.if_a, v.addr_b.ip, v.mac_b), (v.ns_b, v.if_b, v.addr_a.ip, v.mac_a)} <= neighbours
        assert {(v.ns_a, v.if_a), (v.ns_b, v.if_b)} <= up
    assert {(ns, "lo", addr) for ns, addr in topo.lo_addresses} <= addresses
    assert {(ns, "lo") for ns in topo.namespaces} <= up
