"""Random and mutated plans: the loader answers with a clear PlanError or a plan, never a traceback."""

from ipaddress import IPv4Network

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emulator.model import Plan, VNet
from emulator.plan import parse_plan_text
from emulator.problems import PlanError
from emulator.render import render_topology
from emulator.topology import build_topology
from tests.conftest import PLANS

BASE = yaml.safe_load((PLANS / "vnet-to-vnet-plus-onprem.yaml").read_text())

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 500), st.text(max_size=20),
                    st.sampled_from(["10.0.0.0/8", "10.11.0.0/16", "10.11.1.0/27", "auto", "5.4.3.2", "A1b2C3D4",
                                     "DynamicRouting", "StaticRouting", "HighPerformance", "300.1.1.1/8"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                      max_leaves=12)


def paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from paths(v, prefix + (i,))


ALL_PATHS = [p for p in paths(BASE) if p]


def mutate(data, path, value):
    import copy

    data = copy.deepcopy(data)
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return data


def check(text: str) -> None:
    try:
        plan, _ = parse_plan_text(text, "fuzz.yaml")
    except PlanError as exc:
        assert exc.problems and all(str(p).startswith("fuzz.yaml") for p in exc.problems)
        return
    from pathlib import Path

    render_topology(build_topology(plan), Path("/nonexistent-lab"), "libipsec")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(ALL_PATHS), values)
def test_mutated_plans(path, value):
    check(yaml.safe_dump(mutate(BASE, path, value)))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_random_text(text):
    check(text)


@settings(max_examples=100, deadline=None)
@given(values)
def test_random_structures(value):
    check(yaml.safe_dump(value))


prefixes = st.builds(lambda addr, length: IPv4Network((addr, length), strict=False),
                     st.integers(0, 2**32 - 1), st.integers(0, 32))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(prefixes, min_size=1, max_size=3), max_size=12), st.lists(prefixes, min_size=1, max_size=3))
def test_the_vnets_a_site_overlaps_are_the_ones_a_pairwise_check_finds(spaces, site):
    """The prefix index that keeps a 1,000-VNet plan's validation fast finds exactly the VNets that
    comparing the site with every VNet, prefix by prefix, finds (nested, equal and disjoint prefixes)."""
    plan = Plan("p", tuple(VNet(f"V{i}", "East US", tuple(s)) for i, s in enumerate(spaces)), ())
    pairwise = [v for v in plan.vnets if any(a.overlaps(b) for a in site for b in v.address_space)]
    assert plan.vnets_overlapping(tuple(site)) == pairwise
