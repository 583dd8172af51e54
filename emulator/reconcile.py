"""Desired state → the ordered actions that take a running lab there. Pure: no root, no files.

The *live state* of a lab is what can change while it runs: each namespace's routes, each
gateway's bandwidth cap, and per gateway whether its daemon runs, which connections it holds
loaded (one digest per connection: addresses, selectors, proposals, key) and its secrets.
`up` applies the desired state to nothing; `set-key`, `update-site`, `connect`/`disconnect`,
the supervisor that restarts a dead daemon and `reset-gateway` change the desired state (or
forget part of what runs) and apply the difference. executor.py runs the actions and records,
after each one, the state it leaves: the snapshot is always what runs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network
from typing import ClassVar, Mapping

from .model import PathConditions
from .topology import Route, Topology, TunnelEnd


@dataclass(frozen=True)
class GatewayState:
    conns: Mapping[str, str] = field(default_factory=dict)  # loaded connection -> digest of its settings
    secrets: str = ""  # digest of the keys loaded


@dataclass(frozen=True)
class LiveState:
    routes: frozenset[Route] = frozenset()
    rates: Mapping[str, int] = field(default_factory=dict)  # namespace -> cap (Mbit/s) on its backbone link
    gateways: Mapping[str, GatewayState] = field(default_factory=dict)  # gateways whose daemon runs
    links_down: frozenset[str] = frozenset()  # namespaces whose backbone link is down
    paths: Mapping[str, PathConditions] = field(default_factory=dict)  # namespace -> its backbone link's conditions
    clamps: Mapping[str, int] = field(default_factory=dict)  # namespace -> MSS its forwarded handshakes get

    def to_json(self) -> str:
        return json.dumps({
            "routes": sorted([r.ns, str(r.dst), str(r.via) if r.via else None, r.prohibit] for r in self.routes),
            "rates": dict(sorted(self.rates.items())),
            "gateways": {n: {"conns": dict(sorted(g.conns.items())), "secrets": g.secrets}
                         for n, g in sorted(self.gateways.items())},
            "links_down": sorted(self.links_down),
            "paths": {ns: p.to_json() for ns, p in sorted(self.paths.items())},
            "clamps": dict(sorted(self.clamps.items()))}, indent=1)

    @staticmethod
    def from_json(text: str) -> "LiveState":
        data = json.loads(text)
        return LiveState(
            frozenset(Route(ns, IPv4Network(dst), IPv4Address(via) if via else None, prohibit)
                      for ns, dst, via, prohibit in data["routes"]),
            data["rates"],
            {n: GatewayState(g["conns"], g["secrets"]) for n, g in data["gateways"].items()},
            frozenset(data.get("links_down", [])),
            {ns: PathConditions.from_json(p) for ns, p in data.get("paths", {}).items()},
            data.get("clamps", {}))

    def without_gateway(self, name: str) -> "LiveState":
        """What runs once a gateway's daemon is gone: it holds nothing any more."""
        return replace(self, gateways={n: g for n, g in self.gateways.items() if n != name})

    def with_routes_of(self, ns: str, routes: frozenset[Route]) -> "LiveState":
        """The same, with one namespace's routes as the kernel really holds them (a link that went
        down takes its routes with it)."""
        return replace(self, routes=frozenset(r for r in self.routes if r.ns != ns) | routes)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def tunnel_digest(t: TunnelEnd) -> str:
    """Changes whenever anything the daemon was loaded with for this connection changes."""
    key = t.shared_key.reveal() if t.shared_key else ""
    return _digest(repr((t.local_ip, t.identity, t.remote_ip, t.local_ts, t.remote_ts, t.ike_version, t.ipsec,
                         t.initiator, key)))


def desired_state(topo: Topology, disconnected: frozenset[str], sku_limit: bool,
                  links_down: frozenset[str] = frozenset()) -> LiveState:
    """What should run. `disconnected` holds 'GATEWAY/SITE' refs; `links_down` gateways whose
    backbone link should be down (and with it the routes through it: the kernel drops them)."""
    gws = {}
    for gw in topo.gateways:
        loaded = [t for t in gw.tunnels if f"{gw.name}/{t.local_site}" not in disconnected]
        keys = sorted(t.shared_key.reveal() for t in gw.tunnels if t.shared_key)
        gws[gw.name] = GatewayState({t.conn_id: tunnel_digest(t) for t in loaded}, _digest(repr(keys)))
    rates = {gw.netns: gw.sku.mbps for gw in topo.gateways if sku_limit and gw.sku is not None}
    down = frozenset(gw.netns for gw in topo.gateways if gw.name in links_down)
    routes = frozenset(r for r in topo.routes if not (r.ns in down and r.via is not None))
    paths = {gw.netns: gw.path for gw in topo.gateways if gw.path != PathConditions()}
    clamps = {gw.netns: gw.mss_clamp for gw in topo.gateways if gw.mss_clamp}
    return LiveState(routes, rates, gws, down, paths, clamps)


# -- actions ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Action:
    phase: ClassVar[int]

    def removes(self) -> bool:
        """Takes something away: the snapshot records it before it runs (executor.py)."""
        return False

    def ahead(self, state: LiveState) -> LiveState:
        """What the snapshot says while the action runs: never more than may be running."""
        return self.after(state) if self.removes() else state

    def describe(self) -> str:
        raise NotImplementedError

    def after(self, state: LiveState) -> LiveState:
        """The live state once this action has run."""
        return state


@dataclass(frozen=True)
class StopDaemon(Action):
    gateway: str
    phase: ClassVar[int] = 0

    def removes(self) -> bool:
        return True

    def describe(self) -> str:
        return f"stop the daemon of {self.gateway}"

    def after(self, state: LiveState) -> LiveState:
        return state.without_gateway(self.gateway)


@dataclass(frozen=True)
class SetLink(Action):
    """A gateway's backbone link down or up. Down takes the routes through it (the kernel does);
    up comes before the routes are added again."""

    ns: str
    up: bool
    phase: ClassVar[int] = 1

    def describe(self) -> str:
        return f"{self.ns}: set its backbone link {'up' if self.up else 'down'}"

    def removes(self) -> bool:
        return not self.up

    def after(self, state: LiveState) -> LiveState:
        if self.up:
            return replace(state, links_down=state.links_down - {self.ns})
        return replace(state, links_down=state.links_down | {self.ns},
                       routes=frozenset(r for r in state.routes if not (r.ns == self.ns and r.via is not None)))


@dataclass(frozen=True)
class DelRoute(Action):
    route: Route
    phase: ClassVar[int] = 1

    def removes(self) -> bool:
        return True

    def describe(self) -> str:
        return f"{self.route.ns}: delete route {_route_text(self.route)}"

    def after(self, state: LiveState) -> LiveState:
        return replace(state, routes=state.routes - {self.route})


@dataclass(frozen=True)
class AddRoute(Action):
    route: Route
    phase: ClassVar[int] = 2

    def describe(self) -> str:
        return f"{self.route.ns}: add route {_route_text(self.route)}"

    def after(self, state: LiveState) -> LiveState:
        return replace(state, routes=state.routes | {self.route})


@dataclass(frozen=True)
class SetRate(Action):
    ns: str
    mbps: int | None  # None: no cap
    phase: ClassVar[int] = 3

    def describe(self) -> str:
        return f"{self.ns}: " + (f"cap the backbone link at {self.mbps} Mbit/s" if self.mbps else "lift the backbone cap")

    def removes(self) -> bool:
        return not self.mbps

    def after(self, state: LiveState) -> LiveState:
        rates = {ns: r for ns, r in state.rates.items() if ns != self.ns}
        return replace(state, rates=rates | ({self.ns: self.mbps} if self.mbps else {}))


UNKNOWN_PATH = PathConditions(mtu=0)  # equal to no desired state


@dataclass(frozen=True)
class SetPath(Action):
    """A gateway's backbone link conditions: its MTU, and nftables rules for loss and blocking."""

    ns: str
    conditions: PathConditions
    # where the delay is made, when it changes: the backbone's end of the link (namespace, interface)
    delay_at: tuple[str, str] | None = None
    phase: ClassVar[int] = 3

    def describe(self) -> str:
        return f"{self.ns}: backbone link conditions: {self.conditions.describe()}"

    def ahead(self, state: LiveState) -> LiveState:
        """Unknown while it runs (old rules flushed, new not yet in): the next apply redoes it."""
        return replace(state, paths={**state.paths, self.ns: UNKNOWN_PATH})

    def after(self, state: LiveState) -> LiveState:
        paths = {ns: p for ns, p in state.paths.items() if ns != self.ns}
        return replace(state, paths=paths | ({self.ns: self.conditions} if self.conditions != PathConditions() else {}))


@dataclass(frozen=True)
class SetClamp(Action):
    """The MSS a gateway writes into the TCP handshakes it forwards (none: left as they are)."""

    ns: str
    mss: int | None
    phase: ClassVar[int] = 3

    def describe(self) -> str:
        return f"{self.ns}: " + (f"clamp TCP MSS at {self.mss}" if self.mss else "no TCP MSS clamp")

    def after(self, state: LiveState) -> LiveState:
        clamps = {ns: m for ns, m in state.clamps.items() if ns != self.ns}
        return replace(state, clamps=clamps | ({self.ns: self.mss} if self.mss else {}))


@dataclass(frozen=True)
class WriteConfig(Action):
    gateway: str
    phase: ClassVar[int] = 4

    def describe(self) -> str:
        return f"{self.gateway}: render its strongswan.conf, swanctl.conf, secrets.conf"


@dataclass(frozen=True)
class StartDaemon(Action):
    gateway: str
    phase: ClassVar[int] = 5

    def describe(self) -> str:
        return f"start the daemon of {self.gateway}"

    def after(self, state: LiveState) -> LiveState:
        return replace(state, gateways={**state.gateways, self.gateway: GatewayState()})


@dataclass(frozen=True)
class Terminate(Action):
    gateway: str
    conn: str
    phase: ClassVar[int] = 6

    def describe(self) -> str:
        return f"{self.gateway}: close the SAs of {self.conn}"


@dataclass(frozen=True)
class Unload(Action):
    gateway: str
    conn: str
    phase: ClassVar[int] = 7

    def removes(self) -> bool:
        return True

    def describe(self) -> str:
        return f"{self.gateway}: unload connection {self.conn}"

    def after(self, state: LiveState) -> LiveState:
        g = state.gateways[self.gateway]
        conns = {c: d for c, d in g.conns.items() if c != self.conn}
        return replace(state, gateways={**state.gateways, self.gateway: replace(g, conns=conns)})


@dataclass(frozen=True)
class Load(Action):
    """Load the gateway's keys and these connections (with the digests they are loaded at)."""

    gateway: str
    conns: tuple[tuple[str, str], ...]
    secrets: str
    phase: ClassVar[int] = 8

    def describe(self) -> str:
        names = ", ".join(c for c, _ in self.conns) or "no connection"
        return f"{self.gateway}: load its keys and {names}"

    def after(self, state: LiveState) -> LiveState:
        g = state.gateways[self.gateway]
        return replace(state, gateways={**state.gateways, self.gateway: GatewayState(
            {**g.conns, **dict(self.conns)}, self.secrets)})


@dataclass(frozen=True)
class Initiate(Action):
    gateway: str
    conn: str
    wait: bool  # False for a peer outside the lab: tried in the background, as a real gateway keeps trying
    phase: ClassVar[int] = 9

    def describe(self) -> str:
        return f"{self.gateway}: initiate {self.conn}" + ("" if self.wait else " (in the background)")


def _route_text(r: Route) -> str:
    return f"{r.dst} prohibit" if r.prohibit else f"{r.dst} via {r.via}"


# -- the difference ---------------------------------------------------------------------------

def _delay(c: PathConditions) -> tuple[int, int]:
    return c.delay_ms, c.jitter_ms


def _delay_end(topo: Topology, ns: str) -> tuple[str, str]:
    """Delay is made on the backbone's end of a gateway's link, holding back what reaches the gateway,
    so it never queues behind (or reshapes) the SKU's cap on the gateway's own end; a round trip
    through the gateway grows by the delay either way."""
    gw = next(g for g in topo.gateways if g.netns == ns)
    return topo.backbone, topo.backbone_link(gw).if_a


def diff(applied: LiveState, desired: LiveState, topo: Topology) -> list[Action]:
    """The actions, in execution order (by phase; within a phase, by gateway or namespace), that
    turn `applied` into `desired`. Applying every action's `after` to `applied` gives `desired`."""
    actions: list[Action] = []
    for gw in applied.gateways.keys() - desired.gateways.keys():
        actions.append(StopDaemon(gw))
    for ns in sorted(applied.links_down ^ desired.links_down):
        actions.append(SetLink(ns, up=ns not in desired.links_down))
    actions += [DelRoute(r) for r in applied.routes - desired.routes]
    actions += [AddRoute(r) for r in desired.routes - applied.routes]
    for ns in sorted(applied.rates.keys() | desired.rates.keys()):
        if applied.rates.get(ns) != desired.rates.get(ns):
            actions.append(SetRate(ns, desired.rates.get(ns)))
    for ns in sorted(applied.paths.keys() | desired.paths.keys()):
        if applied.paths.get(ns, PathConditions()) != desired.paths.get(ns, PathConditions()):
            was, want = applied.paths.get(ns, PathConditions()), desired.paths.get(ns, PathConditions())
            delay_at = _delay_end(topo, ns) if was == UNKNOWN_PATH or _delay(was) != _delay(want) else None
            actions.append(SetPath(ns, want, delay_at))
    for ns in sorted(applied.clamps.keys() | desired.clamps.keys()):
        if applied.clamps.get(ns) != desired.clamps.get(ns):
            actions.append(SetClamp(ns, desired.clamps.get(ns)))
    new_daemons = desired.gateways.keys() - applied.gateways.keys()
    came_up = applied.links_down - desired.links_down
    for gw in topo.gateways:
        want = desired.gateways.get(gw.name)
        if want is None:
            continue
        have = applied.gateways.get(gw.name, GatewayState())
        changed = [c for c, d in want.conns.items() if have.conns.get(c) != d]
        gone = [c for c in have.conns if c not in want.conns]
        if changed or gone or have.secrets != want.secrets or gw.name in new_daemons:
            actions.append(WriteConfig(gw.name))
        if gw.name in new_daemons:
            actions.append(StartDaemon(gw.name))
        for conn in gone:
            actions += [Terminate(gw.name, conn), Unload(gw.name, conn)]
        for conn in changed:
            if conn in have.conns:  # its SAs were made with the old settings
                actions.append(Terminate(gw.name, conn))
        if changed or have.secrets != want.secrets:
            actions.append(Load(gw.name, tuple((c, want.conns[c]) for c in changed), want.secrets))
        by_conn = {t.conn_id: t for t in gw.tunnels}
        if gw.netns in came_up and gw.name not in new_daemons:
            # the link took the daemon's own routes (the kernel data plane's, in table 220) with it:
            # the tunnels are made again, from this side, like those of a restarted daemon
            again = [c for c in want.conns if c not in changed and by_conn[c].shared_key is not None]
            actions += [Terminate(gw.name, c) for c in again]
            changed = changed + again
        for conn in changed:
            t = by_conn[conn]
            peer = topo.peer_gateway(t)
            # At `up` both ends start together and only the initiator end initiates (two daemons
            # initiating at once race). Otherwise the other end holds stale SAs: initiate from here.
            both_new = peer is not None and peer.name in new_daemons and gw.name in new_daemons
            if t.shared_key is not None and (t.initiator or not both_new):
                actions.append(Initiate(gw.name, conn, wait=t.peer_in_lab))
    return sorted(actions, key=lambda a: a.phase)


def replay(state: LiveState, actions: list[Action]) -> LiveState:
    for a in actions:
        state = a.after(state)
    return state
