"""`up`'s netlink worker (emulator/netlink.py) and the command's process that never loads pyroute2."""

import errno
import os
import signal
import subprocess
import sys
import time
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from emulator.netlink import NetlinkWorker
from netns import nsfs
from netns.registry import start_ticks
from tests.lab.conftest import live, netlink_workers


def _modules_loaded(stderr: str) -> set[str]:
    """The modules a process loaded, from its `python -X importtime` report."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


def test_up_and_down_load_no_pyroute2_in_the_commands_process(lab):
    """The command makes the namespaces and boots the daemons while its worker loads pyroute2 (0.05 s)
    on the other core: a module of `up`'s or `down`'s path that imported it again would put that
    back on the command's path. And the worker is gone when `up` has returned."""
    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-X", "importtime", "-m", "emulator", *argv], env=lab.env,
                              cwd=lab.cwd, capture_output=True, text=True, timeout=60)

    up = run("up", "--name", "t-nl")
    assert up.returncode == 0, up.stderr[-2000:]
    loaded = _modules_loaded(up.stderr)
    assert {"emulator.lab", "emulator.executor", "netns.nsfs"} <= loaded  # the report is the command's
    assert not {m for m in loaded if m.split(".")[0] == "pyroute2"}
    assert not loaded & {"emulator.capture", "emulator.keylog", "emulator.keytables"}  # capture's and trace's
    assert not netlink_workers()
    assert lab.status("t-nl")[("TestVNet1", "VNet4Local")]["connectivity_state"] == "Connected"
    down = run("down", "--name", "t-nl")
    assert down.returncode == 0, down.stderr[-2000:]
    assert not {m for m in _modules_loaded(down.stderr) if m.split(".")[0] == "pyroute2"}


@pytest.fixture
def namespace():
    ns = f"t-nlw-{os.getpid()}"
    nsfs.create(ns)
    yield ns
    nsfs.remove(ns)


def test_the_worker_answers_as_the_namespace_would_and_ends_with_its_command(namespace):
    """Results come back, and so does each error, as the exception ops.Namespace raised (the kernel's
    errno included); a session keeps one socket across its calls; the worker exits when the command
    closes its end."""
    from pyroute2.netlink.exceptions import NetlinkError

    worker = NetlinkWorker.start()
    try:
        worker.run(namespace, [("up", ("lo",)), ("add_address", ("lo", IPv4Interface("192.0.2.7/32")))])
        with worker.namespace(namespace) as n:
            n.add_route(IPv4Network("198.51.100.0/24"), None, True)
            assert n.routes() == [(IPv4Network("198.51.100.0/24"), None, True)]
            assert n.index("lo") == 1  # the loopback is the first link of every namespace
        with pytest.raises(NetlinkError) as unreachable:  # no route to the gateway named
            worker.run(namespace, [("add_route", (IPv4Network("203.0.113.0/24"), IPv4Address("198.18.0.1")))])
        assert unreachable.value.code == errno.ENETUNREACH
        with pytest.raises(LookupError, match=f"no interface bb in namespace {namespace}"):
            worker.run(namespace, [("set_mtu", ("bb", 1400))])
        with pytest.raises(AttributeError, match="ops.Namespace has no method close_everything"):
            worker.run(namespace, [("close_everything", ())])
        with pytest.raises(AttributeError):
            worker.run(namespace, [("__init__", (namespace,))])
    finally:
        worker.close()
    assert worker._proc.returncode == 0


def test_a_killed_command_leaves_no_netlink_worker():
    """SIGKILL gives the command no time to close anything: the worker sees its socket end and exits."""
    code = ("import sys, time\nfrom emulator.netlink import NetlinkWorker\nw = NetlinkWorker.start()\n"
            "print(w._proc.pid, flush=True)\ntime.sleep(60)\n")
    command = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd="/")
    try:
        pid = int(command.stdout.readline())
        started = start_ticks(pid)
    finally:
        command.send_signal(signal.SIGKILL)
        command.wait()
    deadline = time.monotonic() + 10
    while live(pid) and start_ticks(pid) == started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not (live(pid) and start_ticks(pid) == started), "the netlink worker outlived its command"
