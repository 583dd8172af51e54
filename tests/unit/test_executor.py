"""The executor without root: which daemons it asks before it changes anything (its preflight).
The daemons and vici calls are stand-ins; the journal and snapshot are real files."""

import subprocess
import sys
from datetime import datetime, timezone

import pytest

from emulator import gateways
from emulator.executor import Executor
from emulator.lab import Lab
from emulator.reconcile import Initiate, LiveState, StartDaemon, StopDaemon
from emulator.topology import build_topology
from netns.registry import Registry
from emulator.plan import load_plan
from tests.conftest import PLANS


@pytest.fixture
def lab(tmp_path, monkeypatch):
    """The default plan's lab in tmp_path, whose daemons are `sleep` processes that always answer."""
    plan, _ = load_plan(str(PLANS / "classic-vnet-to-vnet.yaml"))
    registry = Registry.create(tmp_path / plan.name)
    procs = []

    def start_charon(netns, directory, lab_dir):
        procs.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]))
        return procs[-1]

    asked = []
    monkeypatch.setattr(gateways, "start_charon", start_charon)
    monkeypatch.setattr(gateways, "wait_ready", lambda directory, proc, deadline: None)
    monkeypatch.setattr(gateways, "check_alive", lambda directory, timeout=2.0: asked.append(directory.name))
    monkeypatch.setattr(gateways, "initiate", lambda directory, conn, children, ms: None)
    lab = Lab(registry.directory, plan, build_topology(plan), "libipsec",
              datetime.now(timezone.utc).isoformat(timespec="seconds"), True)
    yield lab, asked
    for p in procs:
        p.kill()
        p.wait()


def test_a_daemon_the_executor_started_is_not_asked_again_before_its_next_run(lab):
    """`up` runs in parts (boot, routes, initiate): a daemon its executor started and saw ready
    needs no vici session of its own before each later part (300 sessions in a 300-VNet up)."""
    lab, asked = lab
    executor = Executor(lab)
    state = executor.run([StartDaemon("TestVNet1")], LiveState())
    executor.run([Initiate("TestVNet1", "VNet4Local", wait=True)], state)
    assert asked == []


def test_a_daemon_started_by_another_command_or_stopped_since_is_asked(lab):
    lab, asked = lab
    state = Executor(lab).run([StartDaemon("TestVNet1")], LiveState())
    Executor(lab).run([Initiate("TestVNet1", "VNet4Local", wait=True)], state)  # another command's executor
    assert asked == ["TestVNet1"]
    executor = Executor(lab)
    state = executor.run([StartDaemon("TestVNet4")], state)
    state = executor.run([StopDaemon("TestVNet4")], state)
    executor.run([Initiate("TestVNet4", "VNet1Local", wait=True)], state)
    assert asked == ["TestVNet1", "TestVNet4"]


class _Netlink:
    """Stands in for `up`'s netlink worker: records the calls each namespace gets."""

    def __init__(self):
        self.calls = []

    def namespace(self, ns):
        netlink = self

        class Remote:
            name = ns

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                pass

            def __getattr__(self, method):
                return lambda *args: netlink.calls.append((ns, method, args))

        return Remote()


def test_at_once_a_daemon_boots_while_the_links_are_built_and_the_routes_wait_for_them(lab, monkeypatch):
    """`up`'s first part: the daemons need only their namespaces, the routes and caps their links.
    The two overlap (here the daemon starts only once the links are being built, and the links are
    done only once the daemon has started: an executor that ran them one after the other would
    wait forever), and no route comes before the links."""
    import threading

    from emulator.reconcile import AddRoute

    lab, _asked = lab
    netlink = _Netlink()
    building, started = threading.Event(), threading.Event()
    start_charon = gateways.start_charon

    def start_while_the_links_are_built(netns, directory, lab_dir):
        assert building.wait(10), "the daemon's boot did not overlap the links"
        started.set()
        return start_charon(netns, directory, lab_dir)

    def links():
        building.set()
        assert started.wait(10), "the links did not overlap the daemon's boot"
        netlink.calls.append(("links", "built", ()))

    monkeypatch.setattr(gateways, "start_charon", start_while_the_links_are_built)
    route = lab.topology.routes[0]
    state = Executor(lab, netlink=netlink).run([StartDaemon("TestVNet1"), AddRoute(route)], LiveState(),
                                               at_once=True, links=links)
    assert netlink.calls == [("links", "built", ()), (route.ns, "add_route", (route.dst, route.via, route.prohibit))]
    assert route in state.routes and "TestVNet1" in state.gateways
