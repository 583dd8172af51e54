"""The reconciler without root: plan change -> actions, as tables; and the law every diff obeys:
replaying its actions on what runs gives what is desired."""

from dataclasses import replace

import pytest

from emulator.lab import Changes
from emulator.model import SharedKey
from emulator.plan import load_plan
from emulator.reconcile import (AddRoute, DelRoute, Initiate, LiveState, Load, SetClamp, SetLink, SetPath, SetRate,
                                StartDaemon, StopDaemon, Terminate, Unload, WriteConfig, desired_state, diff, replay)
from emulator.topology import build_topology
from tests.conftest import PLANS


def _plan(name: str = "classic-vnet-to-vnet.yaml"):
    plan, _ = load_plan(str(PLANS / name))
    return plan


def _state(plan, disconnected=frozenset(), sku_limit=True):
    topo = build_topology(plan)
    return topo, desired_state(topo, frozenset(disconnected), sku_limit)


def _kinds(actions):
    return [(type(a).__name__, getattr(a, "gateway", None) or getattr(a, "ns", None) or a.route.ns)
            for a in actions]


def test_up_is_apply_from_nothing():
    topo, want = _state(_plan())
    actions = diff(LiveState(), want, topo)
    assert [a.phase for a in actions] == sorted(a.phase for a in actions)
    assert {a.route for a in actions if isinstance(a, AddRoute)} == set(topo.routes)
    assert [(a.ns, a.mbps) for a in actions if isinstance(a, SetRate)] == sorted(
        (g.netns, 100) for g in topo.gateways)
    assert [a.gateway for a in actions if isinstance(a, StartDaemon)] == ["TestVNet1", "TestVNet4"]
    # only the initiator end initiates when both daemons start together (two initiators race)
    initiators = [(g.name, t.conn_id) for g in topo.gateways for t in g.tunnels if t.initiator]
    assert [(a.gateway, a.conn) for a in actions if isinstance(a, Initiate)] == initiators
    assert replay(LiveState(), actions) == want


def test_nothing_changed_means_nothing_to_do():
    topo, want = _state(_plan("vnet-to-vnet-plus-onprem.yaml"))
    assert diff(want, want, topo) == []


def test_set_key_on_one_side_reloads_and_reinitiates_only_that_connection():
    plan = _plan()
    topo, before = _state(plan)
    changed = Changes(keys={"TestVNet1/VNet4Local": "Other9"}).apply(plan)
    topo2, after = _state(changed)
    assert [type(a) for a in diff(before, after, topo2)] == [WriteConfig, Terminate, Load, Initiate]
    assert {a.gateway for a in diff(before, after, topo2)} == {"TestVNet1"}


def test_disconnect_and_connect():
    topo, connected = _state(_plan())
    _, disconnected = _state(_plan(), {"TestVNet4/VNet1Local"})
    off = diff(connected, disconnected, topo)
    assert off == [WriteConfig("TestVNet4"), Terminate("TestVNet4", "VNet1Local"), Unload("TestVNet4", "VNet1Local")]
    on = diff(disconnected, connected, topo)
    assert [type(a) for a in on] == [WriteConfig, Load, Initiate] and on[-1] == Initiate("TestVNet4", "VNet1Local", True)


def test_update_site_moves_routes_and_the_connection():
    plan = _plan("walkthrough-start.yaml")
    topo, before = _state(plan)
    moved = plan.with_gateway_ip("VNet4Local", None)  # from the dummy 5.4.3.2 to TestVNet4's VIP ('auto')
    topo2, after = _state(moved)
    actions = diff(before, after, topo2)
    keyed = topo2.gateway("TestVNet1").tunnels[0].shared_key is not None
    assert [type(a) for a in actions if not isinstance(a, (AddRoute, DelRoute))] == [
        WriteConfig, Terminate, Load, *([Initiate] if keyed else [])]
    assert {a.route for a in actions if isinstance(a, DelRoute)} == set(topo.routes) - set(topo2.routes)
    assert {a.route for a in actions if isinstance(a, AddRoute)} == set(topo2.routes) - set(topo.routes)
    assert replay(before, actions) == after


def test_a_dead_daemon_is_brought_back_with_every_keyed_tunnel_initiated():
    topo, want = _state(_plan("three-vnet-chain.yaml"))
    actions = diff(want.without_gateway("VNetB"), want, topo)
    assert [type(a) for a in actions][:3] == [WriteConfig, StartDaemon, Load]
    # the peers still hold SAs with the dead daemon: this side initiates every tunnel, initiator or not
    assert sorted(a.conn for a in actions if isinstance(a, Initiate)) == sorted(
        t.conn_id for t in topo.gateway("VNetB").tunnels)
    assert replay(want.without_gateway("VNetB"), actions) == want


def test_a_lifted_cap_is_put_back_and_a_lost_route_re_added():
    topo, want = _state(_plan())
    ns = topo.gateway("TestVNet1").netns
    lost = next(r for r in topo.routes if r.ns == ns and r.via is not None)
    drifted = replace(want, rates={k: v for k, v in want.rates.items() if k != ns}).with_routes_of(
        ns, frozenset(r for r in want.routes if r.ns == ns and r != lost))
    assert diff(drifted, want, topo) == [AddRoute(lost), SetRate(ns, 100)]


def test_a_removed_gateway_is_stopped_and_no_sku_limit_means_no_cap():
    topo, want = _state(_plan(), sku_limit=False)
    assert want.rates == {}
    extra = replace(want, gateways={**want.gateways, "Gone": want.gateways["TestVNet1"]})
    assert diff(extra, want, topo) == [StopDaemon("Gone")]


@pytest.mark.parametrize("plan_name", ["classic-vnet-to-vnet.yaml", "three-vnet-chain.yaml",
                                       "vnet-to-vnet-plus-onprem.yaml", "walkthrough-start.yaml"])
def test_every_diff_replays_to_the_desired_state(plan_name):
    plan = _plan(plan_name)
    topo, want = _state(plan)
    refs = [f"{g.name}/{t.local_site}" for g in topo.gateways for t in g.tunnels]
    variants = [LiveState(), want, want.without_gateway(topo.gateways[0].name),
                _state(plan, set(refs[:1]))[1], _state(plan, set(refs))[1],
                _state(plan.with_key(*refs[0].split("/"), SharedKey("Zz1")))[1]]
    for start in variants:
        assert replay(start, diff(start, want, topo)) == want
        assert diff(replay(start, diff(start, want, topo)), want, topo) == []


def test_the_snapshot_survives_json():
    topo, want = _state(_plan("vnet-to-vnet-plus-onprem.yaml"))
    assert LiveState.from_json(want.to_json()) == want
    assert "A1b2C3D4" not in want.to_json()  # digests, never keys


def test_descriptions_name_the_target_and_never_a_key():
    plan = Changes(keys={"TestVNet1/VNet4Local": "Secret77"}).apply(_plan())
    topo, want = _state(plan)
    lines = [a.describe() for a in diff(LiveState(), want, topo)]
    assert any(line == "TestVNet1: initiate VNet4Local" for line in lines)
    assert not any("Secret77" in line or "A1b2C3D4" in line for line in lines)


def test_a_link_taken_down_takes_its_routes_and_brings_them_back_up():
    topo, up = _state(_plan())
    down = desired_state(topo, frozenset(), True, frozenset({"TestVNet1"}))
    ns = topo.gateway("TestVNet1").netns
    through_bb = {r for r in topo.routes if r.ns == ns and r.via is not None}
    assert through_bb and not through_bb & down.routes and down.links_down == {ns}
    off = diff(up, down, topo)
    assert off[0] == SetLink(ns, False) and {a.route for a in off if isinstance(a, DelRoute)} == through_bb
    on = diff(down, up, topo)
    assert on[0] == SetLink(ns, True) and {a.route for a in on if isinstance(a, AddRoute)} == through_bb
    # the link took the daemon's own routes too (kernel data plane): its tunnels are made again
    assert [a for a in on if isinstance(a, (Terminate, Initiate))] == [
        Terminate("TestVNet1", "VNet4Local"), Initiate("TestVNet1", "VNet4Local", True)]
    assert replay(up, off) == down and replay(down, on) == up
    assert LiveState.from_json(down.to_json()) == down
    assert SetLink(ns, False).removes() and not SetLink(ns, True).removes()


def test_recorded_changes_survive_their_file(tmp_path):
    from emulator.model import PathConditions

    changes = Changes(keys={"TestVNet1/VNet4Local": "Other9"}, gateway_ips={"VNet4Local": "auto"},
                      disconnected=frozenset({"TestVNet4/VNet1Local"}), links_down=frozenset({"TestVNet1"}),
                      paths={"TestVNet1": PathConditions(mtu=1400, loss=2.5, block=frozenset({"esp", "ike"}))},
                      clamps={"TestVNet1": 1302, "TestVNet4": None})
    changes.write(tmp_path)
    assert Changes.read(tmp_path) == changes
    assert oct((tmp_path / "changes.json").stat().st_mode & 0o777) == "0o600"


def test_an_mss_clamp_from_the_plan_or_live_is_one_action_and_nothing_else():
    plan = _plan()
    topo, plain = _state(plan)
    clamped_plan = plan.with_clamp("TestVNet1", 1350)
    topo2, clamped = _state(clamped_plan)
    ns = topo.gateway("TestVNet1").netns
    assert diff(plain, clamped, topo2) == [SetClamp(ns, 1350)]
    assert diff(clamped, plain, topo) == [SetClamp(ns, None)]
    assert SetClamp(ns, None).describe().endswith("no TCP MSS clamp")
    assert SetClamp(ns, None) in diff(LiveState.from_json(clamped.to_json()), plain, topo)
    live = Changes(clamps={"TestVNet1": 1302}).apply(clamped_plan)
    assert live.vnet("TestVNet1").gateway.tcp_mss_clamp == 1302
    assert Changes(clamps={"TestVNet1": None}).apply(clamped_plan).vnet("TestVNet1").gateway.tcp_mss_clamp is None


def test_a_delay_is_made_on_the_backbone_end_and_touched_only_when_it_changes():
    from emulator.model import PathConditions

    plan = _plan()
    topo, plain = _state(plan)
    gw = topo.gateway("TestVNet1")
    far = (topo.backbone, topo.backbone_link(gw).if_a)

    def path(**conditions):
        return _state(Changes(paths={"TestVNet1": PathConditions(**conditions)}).apply(plan))[1]

    slow, lossy = PathConditions(delay_ms=40, jitter_ms=5), PathConditions(delay_ms=40, jitter_ms=5, loss=1)
    assert diff(plain, path(delay_ms=40, jitter_ms=5), topo) == [SetPath(gw.netns, slow, far)]
    assert diff(path(delay_ms=40, jitter_ms=5), path(delay_ms=40, jitter_ms=5, loss=1), topo) == \
        [SetPath(gw.netns, lossy, None)]  # the delay stays as it is
    assert diff(path(delay_ms=40), plain, topo) == [SetPath(gw.netns, PathConditions(), far)]
    cut_short = SetPath(gw.netns, slow, far).ahead(plain)  # the conditions are unknown: set the delay again
    assert diff(cut_short, path(delay_ms=40, jitter_ms=5), topo) == [SetPath(gw.netns, slow, far)]
    assert SetPath(gw.netns, slow, far).describe().endswith("delay 40 ms ± 5 ms")
