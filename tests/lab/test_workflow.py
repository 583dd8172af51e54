"""The classic workflow on a running lab (issue: keys, local-site updates, connection state)."""

import json
import time

import pytest

from tests.conftest import PLANS
from tests.lab.conftest import stop_supervisor

DEFAULT = PLANS / "classic-vnet-to-vnet.yaml"


def wait_state(lab, name, end, wanted, seconds=5.0):
    deadline = time.monotonic() + seconds
    while True:
        st = lab.status(name)[end]
        if st["connectivity_state"] == wanted or time.monotonic() > deadline:
            return st
        time.sleep(0.1)


@pytest.mark.parametrize("ike", [1, 2])
def test_mismatched_keys_then_fixed_with_set_key(lab, tmp_path, ike):
    plan = tmp_path / "p.yaml"
    text = DEFAULT.read_text().replace("local_site: VNet4Local, shared_key: A1b2C3D4}",
                                       "local_site: VNet4Local, shared_key: Mismatch77}")
    for conn_end in ("Mismatch77}", "local_site: VNet1Local, shared_key: A1b2C3D4}"):
        text = text.replace(conn_end, conn_end[:-1] + f", ike_version: {ike}}}")
    plan.write_text(text)
    name = f"t-keys{ike}"
    assert lab.cli("up", str(plan), "--name", name, "--timeout", "5").returncode == 1
    end = ("TestVNet1", "VNet4Local")
    deadline = time.monotonic() + 10
    while "pre-shared key mismatch" not in lab.status(name)[end]["reason"] and time.monotonic() < deadline:
        time.sleep(0.2)
    st = lab.status(name)[end]
    assert st["connectivity_state"] != "Connected"
    assert st["reason"].startswith(f"pre-shared key mismatch (IKEv{ike})")
    assert ("MAC mismatched" if ike == 2 else "decryption failed") in st["reason"]
    pids = sorted(e["pid"] for e in lab.journal(name) if e["kind"] == "process")
    res = lab.cli("set-key", "--name", name, "--vnet", "TestVNet1", "--site", "VNet4Local", "--key", "A1b2C3D4")
    assert res.returncode == 0 and "Status         : Successful" in res.stdout
    assert "A1b2C3D4" not in res.stdout + res.stderr
    assert wait_state(lab, name, end, "Connected")["connectivity_state"] == "Connected"
    assert sorted(e["pid"] for e in lab.journal(name) if e["kind"] == "process") == pids  # nothing restarted
    assert lab.ping(name, "TestVNet1/default", "10.42.0.4")


def test_dummy_address_then_update_site(lab, tmp_path):
    plan = tmp_path / "p.yaml"
    plan.write_text(DEFAULT.read_text().replace("    gateway_ip: auto               # TestVNet4's",
                                                "    gateway_ip: 5.4.3.2  # TestVNet4's"))
    assert lab.cli("up", str(plan), "--name", "t-site", "--timeout", "3").returncode == 1
    res = lab.cli("connection", "--name", "t-site", "--vnet", "TestVNet1", "--json")
    assert res.returncode == 1
    (entry,) = json.loads(res.stdout)
    assert entry["ConnectivityState"] == "NotConnected" and entry["Reason"].startswith("peer unreachable")
    res = lab.cli("update-site", "--name", "t-site", "--site", "VNet4Local", "--gateway-ip", "auto")
    assert res.returncode == 0, res.stderr
    st = wait_state(lab, "t-site", ("TestVNet1", "VNet4Local"), "Connected")
    assert st["connectivity_state"] == "Connected" and st["remote_address"] == "203.0.113.3"
    assert lab.ping("t-site", "TestVNet1/default", "10.41.0.4")
    routes = lab.exec_("t-site", "TestVNet1", "ip", "route").stdout
    assert "5.4.3.2" not in routes  # the route toward the dummy address went with it


def test_proposal_mismatch_is_named(lab, tmp_path):
    plan = tmp_path / "p.yaml"
    plan.write_text(DEFAULT.read_text().replace(
        "local_site: VNet4Local, shared_key: A1b2C3D4}",
        "local_site: VNet4Local, shared_key: A1b2C3D4, ipsec: {ike_proposals: [aes128-sha256-modp2048]}}"))
    assert lab.cli("up", str(plan), "--name", "t-prop", "--timeout", "5").returncode == 1
    st = lab.status("t-prop")[("TestVNet1", "VNet4Local")]
    assert st["reason"].startswith("proposal mismatch (NO_PROPOSAL_CHOSEN)")
    assert "aes128-sha256-modp2048" in st["reason"] and "aes256gcm16-prfsha256-modp1024" in st["reason"]


def test_connection_counters_events_gateway_and_keys(lab):
    assert lab.cli("up", "--name", "t-conn").returncode == 0
    before = json.loads(lab.cli("connection", "--name", "t-conn", "--vnet", "TestVNet1", "--json").stdout)[0]
    assert before["LastEventID"] == 23401
    assert before["LastEventMessage"] == ("The connectivity state for the local network site 'VNet4Local' "
                                          "changed from Connecting to Connected.")
    for _ in range(3):
        assert lab.ping("t-conn", "TestVNet1/default", "10.41.0.4")
    after = json.loads(lab.cli("connection", "--name", "t-conn", "--vnet", "TestVNet1", "--json").stdout)[0]
    assert after["EgressBytesTransferred"] > before["EgressBytesTransferred"]
    assert after["IngressBytesTransferred"] > before["IngressBytesTransferred"]

    res = lab.cli("disconnect", "--name", "t-conn", "--vnet", "TestVNet1", "--site", "VNet4Local")
    assert res.returncode == 0
    st = wait_state(lab, "t-conn", ("TestVNet1", "VNet4Local"), "NotConnected")
    assert st["connectivity_state"] == "NotConnected" and "disconnected" in st["reason"]
    assert not lab.ping("t-conn", "TestVNet1/default", "10.41.0.4")
    down_event = json.loads(lab.cli("connection", "--name", "t-conn", "--vnet", "TestVNet1", "--json").stdout)[0]
    assert "changed from Connected to Not Connected" in down_event["LastEventMessage"]
    assert lab.cli("connect", "--name", "t-conn", "--vnet", "TestVNet1", "--site", "VNet4Local").returncode == 0
    assert wait_state(lab, "t-conn", ("TestVNet1", "VNet4Local"), "Connected")["connectivity_state"] == "Connected"

    gw = json.loads(lab.cli("gateway", "--name", "t-conn", "--vnet", "TestVNet4", "--json").stdout)
    assert gw["VIPAddress"] == "203.0.113.3" and gw["GatewaySKU"] == "Standard" and gw["State"] == "Provisioned"
    key = lab.cli("get-key", "--name", "t-conn", "--vnet", "TestVNet1", "--site", "VNet4Local")
    assert key.stdout.strip() == "Value : A1b2C3D4"
    for argv in (["status", "-v"], ["connection", "--vnet", "TestVNet1", "-v"], ["gateway", "--vnet", "TestVNet1"]):
        res = lab.cli(*argv, "--name", "t-conn")
        assert "A1b2C3D4" not in res.stdout + res.stderr


def test_refusals(lab):
    assert lab.cli("up", "--name", "t-refuse").returncode == 0
    res = lab.cli("set-key", "--name", "t-refuse", "--vnet", "TestVNet1", "--site", "Nowhere", "--key", "abc")
    assert res.returncode == 2 and "not connected to TestVNet1" in res.stderr
    res = lab.cli("set-key", "--name", "t-refuse", "--vnet", "TestVNet1", "--site", "VNet4Local", "--key", "a-b")
    assert res.returncode == 2 and "1-128 letters and digits" in res.stderr and "a-b" not in res.stderr
    res = lab.cli("update-site", "--name", "t-refuse", "--site", "VNet4Local", "--gateway-ip", "300.1.1.1")
    assert res.returncode == 2 and "not an IPv4 address" in res.stderr


@pytest.mark.parametrize("argv", [["demo", "psk-mismatch"], ["demo", "psk-mismatch", "--ike", "1"],
                                  ["demo", "walkthrough"], ["demo", "walkthrough", "--ike", "1"],
                                  ["demo", "dead-peer"], ["demo", "mtu"], ["demo", "nat"]])
def test_demos(lab, argv):
    res = lab.cli(*argv, "--name", "t-demo", timeout=180)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr
    assert "every observation matched" in res.stdout
    assert "A1b2C3D4" not in res.stdout and "DemoOtherKey9" not in res.stdout
    assert not (lab.state / "t-demo").exists()


def test_dead_gateway_daemon_is_named_and_down_still_cleans(lab):
    import os
    import signal

    assert lab.cli("up", "--name", "t-dead").returncode == 0
    stop_supervisor(lab, "t-dead")  # a daemon that stays dead: the supervisor would restart it
    (pid,) = [e["pid"] for e in lab.journal("t-dead") if e["kind"] == "process" and e["what"] == "charon TestVNet4"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while True:  # the kernel needs a moment to tear down the dead daemon's socket
        st = lab.status("t-dead")[("TestVNet4", "VNet1Local")]
        if "not running" in st["reason"] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert st["connectivity_state"] == "NotConnected"
    assert "gateway daemon of TestVNet4 is not running" in st["reason"]


def test_selectors_that_differ_are_named(lab, tmp_path):
    """IKEv1 cannot narrow: a local site listing 10.40.0.0/14 for a VNet with 10.41/16 and 10.42/16
    leaves only some CHILD_SAs up, and the status says which selectors differ; verify fails."""
    plan = tmp_path / "p.yaml"
    plan.write_text(DEFAULT.read_text().replace(
        "  VNet4Local:                      # TestVNet1's view of TestVNet4\n    address_space: [10.41.0.0/16, 10.42.0.0/16]",
        "  VNet4Local:\n    address_space: [10.40.0.0/14]").replace("shared_key: A1b2C3D4}",
                                                             "shared_key: A1b2C3D4, ike_version: 1}"))
    lab.cli("up", str(plan), "--name", "t-ts", "--timeout", "5")
    st = lab.status("t-ts")[("TestVNet4", "VNet1Local")]
    assert st["connectivity_state"] != "Connected"
    assert st["reason"].startswith("traffic selectors differ") and "10.40.0.0/14" in st["reason"]
    assert lab.cli("verify", "--name", "t-ts").returncode == 1
