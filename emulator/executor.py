"""The one place where a running lab changes: run reconcile.py's actions, journal each one, and
keep the snapshot of what runs (`applied.json`, replaced atomically) true at every moment.

The snapshot never claims more than what runs: an action that removes something (a route, a
cap, a daemon, a loaded connection) is written to the snapshot *before* it runs, one that adds
something only *after* it succeeded. A command killed half-way thus leaves a snapshot from
which the next apply re-adds whatever may be missing; adding is idempotent (replace).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from netns.registry import Registry

from . import gateways, impair, interrupts
from .events import append_timestamped
from .reconcile import (Action, AddRoute, DelRoute, Initiate, LiveState, Load, SetClamp, SetLink, SetPath, SetRate,
                        StartDaemon, StopDaemon, Terminate, Unload, WriteConfig)
from .render import render_gateway, write_private, write_rendered
from .swanconf import read_gateway_config

if TYPE_CHECKING:
    from netns.ops import Namespace

    from .netlink import NetlinkWorker

SNAPSHOT = "applied.json"
NETLINK = (SetLink, DelRoute, AddRoute, SetRate, SetPath, SetClamp)  # consecutive phases, run in one namespace socket
ACTIONS_LOG = "actions.jsonl"


def read_snapshot(lab_dir: Path) -> LiveState:
    try:
        return LiveState.from_json((lab_dir / SNAPSHOT).read_text())
    except FileNotFoundError:
        return LiveState()


def write_snapshot(lab_dir: Path, state: LiveState) -> None:
    tmp = lab_dir / f".{SNAPSHOT}.{os.getpid()}"
    write_private(tmp, state.to_json())
    os.replace(tmp, lab_dir / SNAPSHOT)


def describe_all(actions: list[Action]) -> list[str]:
    return [a.describe() for a in actions]


class Executor:
    """Runs actions against one lab (the `Lab` of the desired state: its topology, gateway
    directories, data plane). Within one phase, different gateways and namespaces proceed in
    parallel; one gateway's or namespace's actions run in order."""

    def __init__(self, lab, initiate_timeout: float = 5.0, netlink: NetlinkWorker | None = None):
        """netlink: the worker that carries out the netlink actions (`up`'s); without one, they
        run in this process."""
        self.lab = lab
        self.netlink = netlink
        self.registry = Registry(lab.directory)
        self.initiate_ms = int(initiate_timeout * 1000)
        # daemons this executor started and saw answer: a later run (up runs in parts) need not ask
        # them again (one vici session each, 300 of them in a 300-VNet up)
        self._started: set[str] = set()

    def run(self, actions: list[Action], state: LiveState, at_once: bool = False,
            links: Callable[[], object] | None = None) -> LiveState:
        """A Ctrl-C or SIGTERM stops the run before its next action (interrupts.deferred), never
        inside one: the snapshot then holds what the actions done so far made.
        at_once: the actions run as one batch, whatever their phases: their lanes in parallel, each
        lane in order. For lanes that need nothing of each other: in `up`, a daemon's boot needs
        only its namespace, and a namespace's routes and caps only its links.
        links: what each lane of netlink actions waits for before its first (`up`'s links)."""
        with interrupts.deferred() as check:
            return self._run(actions, state, check, at_once, links)

    def _run(self, actions: list[Action], state: LiveState, check: Callable[[], None], at_once: bool,
             links: Callable[[], object] | None) -> LiveState:
        self._preflight(actions, state)

        def batch_of(a: Action) -> int:
            # the netlink phases run as one batch: one socket per namespace for its link, routes and caps
            return 0 if at_once else -1 if isinstance(a, NETLINK) else a.phase

        for _phase, group in groupby(actions, key=batch_of):
            batch = list(group)
            ahead = state
            for a in batch:
                ahead = a.ahead(ahead)
            if ahead != state:
                write_snapshot(self.lab.directory, ahead)
            done: list[Action] = []
            try:
                self._run_batch(batch, done, check, links)
            finally:
                for a in done:
                    state = a.after(state)
                write_snapshot(self.lab.directory, state)
        return state

    def _preflight(self, actions: list[Action], state: LiveState) -> None:
        """Every daemon an action will talk to answers, and the kernel can do every path condition
        asked for, before anything changes (exit 3)."""
        for a in actions:
            if isinstance(a, SetPath):
                impair.require_support(a.conditions)
        starting = {a.gateway for a in actions if isinstance(a, StartDaemon)} | self._started
        stopping = {a.gateway for a in actions if isinstance(a, StopDaemon)}
        talked_to = {a.gateway for a in actions if isinstance(a, (Terminate, Unload, Load, Initiate))}
        for name in sorted(talked_to - starting - stopping):
            gateways.check_alive(self._dir(name))

    def _dir(self, name: str) -> Path:
        return self.lab.gw_dir(self.lab.topology.gateway(name))

    def _run_batch(self, batch: list[Action], done: list[Action], check: Callable[[], None],
                   links: Callable[[], object] | None) -> None:
        lanes: dict[str, list[Action]] = {}
        for a in batch:
            lanes.setdefault(lane(a), []).append(a)

        def run_lane(actions: list[Action]) -> None:
            if isinstance(actions[0], NETLINK):
                if links:
                    links()
                with self._namespace(lane(actions[0])) as n:
                    for a in actions:
                        check()
                        self._step(a, lambda a=a: self._netlink(n, a))
                        done.append(a)
            else:
                for a in actions:
                    check()
                    self._step(a, lambda a=a: self._gateway_action(a))
                    done.append(a)

        if len(lanes) == 1:
            run_lane(next(iter(lanes.values())))
            return
        with ThreadPoolExecutor(max_workers=min(16, len(lanes))) as pool:
            for future in [pool.submit(run_lane, actions) for actions in lanes.values()]:
                future.result()

    def _step(self, a: Action, run: Callable[[], None]) -> None:
        try:
            run()
        except BaseException as exc:
            self._journal(a, f"failed: {exc}")
            raise
        self._journal(a, "done")

    def _namespace(self, ns: str) -> Namespace:
        if self.netlink:
            return self.netlink.namespace(ns)
        from netns.ops import Namespace  # pyroute2 loads only in a command that needs it here

        return Namespace(ns)

    def _netlink(self, n: Namespace, a: Action) -> None:
        if isinstance(a, AddRoute):
            n.add_route(a.route.dst, a.route.via, a.route.prohibit)
        elif isinstance(a, DelRoute):
            n.del_route(a.route.dst, a.route.via, a.route.prohibit)
        elif isinstance(a, SetLink):
            n.set_state("bb", a.up)
        elif isinstance(a, SetPath):
            impair.apply(n, a.conditions)
            if a.delay_at:
                with self._namespace(a.delay_at[0]) as far:
                    impair.delay(far, a.delay_at[1], a.conditions)
        elif isinstance(a, SetClamp):
            impair.clamp(n, a.mss)
        elif isinstance(a, SetRate):
            if a.mbps:
                n.limit_rate("bb", a.mbps)
            else:
                n.clear_root_qdisc("bb")

    def _journal(self, a: Action, outcome: str) -> None:
        append_timestamped(self.lab.directory / ACTIONS_LOG, {"action": a.describe(), "outcome": outcome})

    def _gateway_action(self, a: Action) -> None:
        gw = self.lab.topology.gateway(a.gateway)
        directory = self.lab.gw_dir(gw)
        if isinstance(a, StopDaemon):
            self._started.discard(gw.name)
            self.registry.stop(f"charon {gw.name}")
        elif isinstance(a, WriteConfig):
            write_rendered([render_gateway(gw, directory, self.lab.dataplane, keylog=True)])
        elif isinstance(a, StartDaemon):
            proc = gateways.start_charon(gw.netns, directory, self.lab.directory)
            self.registry.adopt_process(proc.pid, f"charon {gw.name}")
            gateways.wait_ready(directory, proc, time.monotonic() + 10)
            if self.lab.dataplane == "libipsec":  # its ESP comes through the daemon's socket
                gateways.widen_receive_buffers(proc.pid)
            self._started.add(gw.name)
        elif isinstance(a, Terminate):
            gateways.terminate(directory, a.conn)
        elif isinstance(a, Unload):
            gateways.unload(directory, a.conn)
        elif isinstance(a, Load):
            config = read_gateway_config(directory)
            names = {c for c, _ in a.conns}
            gateways.load(directory, replace(config, connections={
                n: c for n, c in config.connections.items() if n in names}))
        elif isinstance(a, Initiate):
            end = next(t for t in gw.tunnels if t.conn_id == a.conn)
            children = [c[0] for c in end.children]
            if a.wait:
                gateways.initiate(directory, a.conn, children, self.initiate_ms)
            else:
                gateways.initiate_in_background(directory, a.conn, children)


def lane(a: Action) -> str:
    """Actions on one lane run in order; lanes run in parallel."""
    if isinstance(a, (AddRoute, DelRoute)):
        return a.route.ns
    if isinstance(a, (SetRate, SetLink, SetPath, SetClamp)):
        return a.ns
    return a.gateway

