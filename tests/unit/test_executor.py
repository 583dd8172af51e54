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
