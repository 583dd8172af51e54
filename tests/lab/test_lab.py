"""The live lab, end to end, with real strongSwan daemons (issue: the live lab)."""

import json
import os
import signal

import pytest
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import PLANS
from tests.lab.conftest import VNETLAB, assert_nothing_left, live, netlink_workers

DEFAULT = PLANS / "classic-vnet-to-vnet.yaml"


def variant(tmp_path: Path, **replacements: str) -> Path:
    text = DEFAULT.read_text()
    for old, new in replacements.items():
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    return path


def assert_in_callers_session(journal: list[dict]) -> None:
    """Every process the lab left running is in the session of the command that started it, each in
    a process group of its own (a Ctrl-C at the terminal does not reach it). A session of its own
    is an autogroup of its own to the scheduler: daemons started with setsid carried the tunnel at
    0.6 of the same daemons started in one session."""
    procs = [e["pid"] for e in journal if e["kind"] == "process"]
    assert procs
    for pid in procs:
        assert os.getsid(pid) == os.getsid(0), (pid, Path(f"/proc/{pid}/cmdline").read_bytes()[:80])
        assert os.getpgid(pid) not in (os.getpgid(0), os.getsid(0)), pid


def test_default_plan_up_ping_status_down(lab, dataplane):
    res = lab.cli("up", "--name", "t-default", "--dataplane", dataplane)
    assert res.returncode == 0, res.stderr + res.stdout
    assert "A1b2C3D4" not in res.stdout + res.stderr
    st = lab.status("t-default")
    assert {k: v["connectivity_state"] for k, v in st.items()} == {
        ("TestVNet1", "VNet4Local"): "Connected", ("TestVNet4", "VNet1Local"): "Connected"}
    for src, dst in [("TestVNet1/default", "10.41.0.4"), ("TestVNet1/default", "10.42.0.4"),
                     ("TestVNet4/default", "10.11.0.4"), ("TestVNet4/space2", "10.12.0.4")]:
        assert lab.ping("t-default", src, dst), f"{src} -> {dst}"
    after = lab.status("t-default")[("TestVNet1", "VNet4Local")]
    assert after["dataplane"] == dataplane
    assert after["egress_bytes"] > 0 and after["ingress_bytes"] > 0
    assert after["ike_version"] == 2 and after["last_connection_established"]
    # charon itself accepts the rendered files (swanctl parses them and loads them over vici)
    gw = lab.state / "t-default" / "TestVNet1"
    load = subprocess.run(["ip", "netns", "exec", "t-default.v.TestVNet1", "swanctl", "--load-all", "--file",
                           str(gw / "swanctl.conf"), "--uri", f"unix://{gw}/charon.vici"],
                          capture_output=True, text=True)
    assert load.returncode == 0, load.stdout + load.stderr
    assert (gw / "secrets.conf").stat().st_mode & 0o777 == 0o600
    assert (lab.state / "t-default").stat().st_mode & 0o777 == 0o700
    journal = lab.journal("t-default")
    assert_in_callers_session(journal)
    res = lab.cli("down", "--name", "t-default")
    assert res.returncode == 0, res.stderr
    assert_nothing_left(lab.state, {"t-default": journal})
    again = lab.cli("down", "--name", "t-default")  # safe to run twice
    assert again.returncode == 0 and "nothing to remove" in again.stdout


def test_ikev1(lab, tmp_path, dataplane):
    plan = variant(tmp_path, **{"shared_key: A1b2C3D4}": "shared_key: A1b2C3D4, ike_version: 1}"})
    res = lab.cli("up", str(plan), "--name", "t-ikev1", "--dataplane", dataplane)
    assert res.returncode == 0, res.stderr + res.stdout
    st = lab.status("t-ikev1")
    assert all(c["connectivity_state"] == "Connected" and c["ike_version"] == 1 for c in st.values())
    assert lab.ping("t-ikev1", "TestVNet1/default", "10.41.0.4")
    assert lab.ping("t-ikev1", "TestVNet4/default", "10.12.0.4")


def test_dummy_gateway_address_stays_not_connected_and_nothing_leaks(lab, tmp_path):
    text = DEFAULT.read_text().replace("    gateway_ip: auto               # TestVNet4's", "    gateway_ip: 5.4.3.2  # TestVNet4's")
    plan = tmp_path / "dummy.yaml"
    plan.write_text(text)
    res = lab.cli("up", str(plan), "--name", "t-dummy", "--timeout", "5")
    assert res.returncode == 1, res.stderr + res.stdout
    assert "peer unreachable" in res.stderr
    st = lab.status("t-dummy")
    assert st[("TestVNet1", "VNet4Local")]["connectivity_state"] == "NotConnected"
    assert "5.4.3.2" in st[("TestVNet1", "VNet4Local")]["reason"]
    capture = subprocess.Popen(["ip", "netns", "exec", "t-dummy.backbone", "tcpdump", "-n", "-l", "-i", "any",
                                "net", "10.0.0.0/8"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        time.sleep(1.0)
        assert not lab.ping("t-dummy", "TestVNet1/default", "10.41.0.4")
        assert not lab.ping("t-dummy", "TestVNet4/default", "10.11.0.4")
    finally:
        capture.send_signal(signal.SIGINT)
        out, _ = capture.communicate(timeout=5)
    assert out.strip() == "", f"clear-text VNet traffic on the backbone:\n{out}"


def test_killed_up_then_down_leaves_nothing(lab):
    proc = subprocess.Popen([sys.executable, "-m", "emulator", "up", "--name", "t-killed"], env=lab.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not (lab.state / "t-killed" / "TestVNet1" / "swanctl.conf").exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    journal = lab.journal("t-killed")
    assert any(e["kind"] == "netns" for e in journal)
    res = lab.cli("down", "--name", "t-killed")
    assert res.returncode == 0, res.stderr
    assert_nothing_left(lab.state, {"t-killed": journal})


def test_two_labs_side_by_side(lab):
    assert lab.cli("up", "--name", "t-one").returncode == 0
    assert lab.cli("up", "--name", "t-two").returncode == 0
    assert lab.ping("t-one", "TestVNet1/default", "10.41.0.4")
    assert lab.ping("t-two", "TestVNet1/default", "10.41.0.4")
    one = lab.journal("t-one")
    assert lab.cli("down", "--name", "t-one").returncode == 0
    assert all(not Path("/run/netns", e["name"]).exists() for e in one if e["kind"] == "netns")
    assert all(not live(e["pid"]) for e in one if e["kind"] == "process")
    st = lab.status("t-two")
    assert all(c["connectivity_state"] == "Connected" for c in st.values())
    assert lab.ping("t-two", "TestVNet4/default", "10.11.0.4")


def test_up_refuses_without_root_needs_and_bad_plan_creates_nothing(lab, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("vnets: [")
    res = lab.cli("up", str(bad), "--name", "t-bad")
    assert res.returncode == 2 and "malformed YAML" in res.stderr
    assert not (lab.state / "t-bad").exists()
    res = lab.cli("status", "--name", "t-nothing")
    assert res.returncode == 3 and "no lab named" in res.stderr
    res = lab.cli("exec", "--name", "t-nothing", "X", "--", "true")
    assert res.returncode == 3


def test_status_json_keys(lab):
    assert lab.cli("up", "--name", "t-json").returncode == 0
    data = json.loads(lab.cli("status", "--name", "t-json", "--json").stdout)
    assert data["dataplane"] in ("kernel", "libipsec")
    keys = {"vnet", "local_site", "connectivity_state", "ingress_bytes", "egress_bytes",
            "last_connection_established", "ike_version"}
    assert all(keys <= set(c) for c in data["connections"])


def test_graph_of_running_lab(lab, tmp_path):
    assert lab.cli("up", "--name", "t-graph").returncode == 0
    for suffix in ("svg", "png"):
        res = lab.cli("graph", "--name", "t-graph", "-o", str(tmp_path / f"lab.{suffix}"))
        assert res.returncode == 0, res.stderr
    svg = (tmp_path / "lab.svg").read_text()
    assert "Connected" in svg and "forestgreen" in svg and "VNet4Local" in svg and "VNet1Local" in svg


def test_unsupported_dataplane_is_refused_and_leaves_nothing(lab, supported):
    missing = [d for d in ("kernel", "libipsec") if d not in supported]
    if not missing:
        pytest.skip("this machine supports both data planes")
    res = lab.cli("up", "--name", "t-nodp", "--dataplane", missing[0])
    assert res.returncode == 3 and ("cannot carry ESP" in res.stderr or "is missing" in res.stderr)
    assert not (lab.state / "t-nodp").exists()
    assert not Path("/run/netns/t-nodp.backbone").exists()


def test_down_all_removes_only_labs_never_another_directory(lab, tmp_path):
    """`down --all` once removed every directory of the state base, and an empty $VNETLAB_STATE_DIR
    made that the current directory: a source checkout went, .git included."""
    work = tmp_path / "checkout"
    (work / ".git").mkdir(parents=True)
    (work / "src").mkdir()
    empty = subprocess.run([str(VNETLAB), "down", "--all"], env={**lab.env, "VNETLAB_STATE_DIR": ""},
                           cwd=work, capture_output=True, text=True)
    assert empty.returncode == 2 and "VNETLAB_STATE_DIR" in empty.stderr and "Traceback" not in empty.stderr
    assert (work / ".git").is_dir() and (work / "src").is_dir()
    assert lab.cli("up", "--name", "t-mine").returncode == 0
    stranger = lab.state / "not-a-lab"
    stranger.mkdir()
    (stranger / "keep.txt").write_text("mine")
    res = lab.cli("down", "--all")
    assert res.returncode == 0 and "t-mine" in res.stdout and "not-a-lab" not in res.stdout
    assert (stranger / "keep.txt").read_text() == "mine"
    stranger.joinpath("keep.txt").unlink()
    stranger.rmdir()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_up_removes_what_it_built(lab, sig):
    proc = subprocess.Popen([sys.executable, "-m", "emulator", "up", "--name", "t-intr"], env=lab.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while not (lab.state / "t-intr" / "TestVNet1" / "swanctl.conf").exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    journal = lab.journal("t-intr")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130 and "interrupted" in err
    assert_nothing_left(lab.state, {"t-intr": journal})
    assert not netlink_workers()
    # also what was made after the journal was read: no namespace of this lab may exist
    netns = os.listdir("/run/netns") if os.path.isdir("/run/netns") else []
    assert not [ns for ns in netns if ns.startswith("t-intr.")]


def test_the_helpers_up_starts_early_run_at_its_priority_once_it_is_up(lab):
    """The event monitor starts at the lowest priority, so that its start takes no CPU from the
    build (netns.spawn.lowest_priority); once `up` is done, every thread of it and of the key
    recorder must run at the command's priority, or a busy machine would starve their healing and
    recording."""
    assert lab.cli("up", "--name", "t-prio").returncode == 0
    helpers = [e["pid"] for e in lab.journal("t-prio")
               if e["kind"] == "process" and e["what"] in ("key recorder", "event monitor")]
    assert len(helpers) == 2
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    deadline = time.monotonic() + 10  # the monitor's heavy imports, after "ready", also run at the lowest
    while _nice_values(helpers) != {mine} and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _nice_values(helpers) == {mine}


def _nice_values(pids: list[int]) -> set[int]:
    """The nice value of every thread of these processes (Linux keeps one per thread)."""
    return {int(task.joinpath("stat").read_text().rsplit(")", 1)[1].split()[16])
            for pid in pids for task in Path(f"/proc/{pid}/task").iterdir()}


def test_a_teardown_never_kills_the_command_itself(tmp_path):
    """A command left standing in one of its lab's namespaces (a Ctrl-C between two setns calls did
    that once: `up` tore its lab down and SIGKILLed itself, leaving the namespaces) survives the teardown."""
    ns = f"t-self-{os.getpid()}"
    code = ("import sys\nfrom pathlib import Path\nfrom pyroute2 import netns\nfrom netns.registry import Registry\n"
            f"reg = Registry.create(Path(sys.argv[1]))\nreg.create_netns('{ns}')\nnetns.pushns('{ns}')\n"
            "print(reg.teardown(grace=0.2), flush=True)\n")
    try:
        done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "lab")], capture_output=True, text=True,
                              timeout=30)
        assert (done.returncode, done.stdout, done.stderr) == (0, "[]\n", "")
        assert not Path("/run/netns", ns).exists() and not (tmp_path / "lab").exists()
    finally:
        if Path("/run/netns", ns).exists():  # the teardown failed: the test removes what it made
            subprocess.run(["ip", "netns", "del", ns], check=True)


def test_namespaces_and_their_sockets_are_made_without_a_fork(monkeypatch):
    """pyroute2's netns.create and IPRoute(netns=…) fork the whole Python process, one fork for each
    namespace and each socket opened in one: 7-13 ms each, a third of `up`'s build. The lab makes
    them from its own thread, which then is back in its own namespace."""
    from netns import nsfs, ops

    def no_fork():
        raise AssertionError("a process was forked")

    home = os.readlink("/proc/thread-self/ns/net")
    ns = f"t-nofork-{os.getpid()}"
    monkeypatch.setattr(os, "fork", no_fork)
    nsfs.create(ns)
    try:
        with ops.Namespace(ns) as n:
            n.up("lo")  # the namespace's own lo, which starts down (the host's is up already)
        assert os.readlink("/proc/thread-self/ns/net") == home
        inside = subprocess.run(["ip", "-n", ns, "-o", "link", "show", "lo"], capture_output=True, text=True)
        assert "UP" in inside.stdout.split(">")[0], inside.stdout
    finally:
        nsfs.remove(ns)
    assert not Path("/run/netns", ns).exists()
