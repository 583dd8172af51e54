"""A lab under faults (issue 9): a dead gateway daemon gives a clear exit 3 and records nothing;
concurrent changes lose no update; connect and disconnect are idempotent."""

import json
import os
import signal
import subprocess
import time

from tests.conftest import PLANS
from tests.lab.conftest import VNETLAB, charon_pid, live, stop_supervisor


def _key(lab, name: str, vnet: str, site: str) -> str:
    res = lab.cli("get-key", "--name", name, "--vnet", vnet, "--site", site, "--json")
    return json.loads(res.stdout)["Value"]


def test_changes_against_a_dead_daemon_fail_clearly_and_record_nothing(lab):
    assert lab.cli("up", "--name", "t-dead").returncode == 0
    stop_supervisor(lab, "t-dead")  # supervision off: the daemon must stay dead for this test
    pid = charon_pid(lab, "t-dead", "TestVNet1")
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while live(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    for argv in (["set-key", "--vnet", "TestVNet1", "--site", "VNet4Local", "--key", "NewKey99"],
                 ["disconnect", "--vnet", "TestVNet1", "--site", "VNet4Local"],
                 ["update-site", "--site", "VNet4Local", "--gateway-ip", "203.0.113.5"]):
        res = lab.cli(*argv, "--name", "t-dead")
        assert res.returncode == 3, (argv, res.stdout, res.stderr)
        assert "Traceback" not in res.stderr and "gateway TestVNet1 is not answering" in res.stderr
        assert "Successful" not in res.stdout
    assert _key(lab, "t-dead", "TestVNet1", "VNet4Local") == "A1b2C3D4"  # the failed set-key was not recorded
    changes = lab.state / "t-dead" / "changes.json"
    assert not changes.exists() or json.loads(changes.read_text()) == {"keys": {}, "gateway_ips": {},
                                                                         "disconnected": []}


def test_disconnect_and_connect_twice_are_idempotent(lab):
    assert lab.cli("up", "--name", "t-idem").returncode == 0
    args = ["--name", "t-idem", "--vnet", "TestVNet4", "--site", "VNet1Local"]
    first = lab.cli("disconnect", *args)
    assert first.returncode == 0 and "nothing to do" not in first.stderr
    second = lab.cli("disconnect", *args)
    assert second.returncode == 0 and "nothing to do" in second.stderr and "Traceback" not in second.stderr
    assert lab.cli("connect", *args).returncode == 0
    again = lab.cli("connect", *args)
    assert again.returncode == 0 and "nothing to do" in again.stderr
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(c["connectivity_state"] != "Connected" for c in lab.status("t-idem").values()):
        time.sleep(0.2)
    assert all(c["connectivity_state"] == "Connected" for c in lab.status("t-idem").values())


def test_concurrent_set_key_loses_no_update(lab):
    assert lab.cli("up", "--name", "t-conc").returncode == 0
    ends = [("TestVNet1", "VNet4Local"), ("TestVNet4", "VNet1Local")]
    for round_ in range(100):
        key = f"Round{round_}x"
        procs = [subprocess.Popen([str(VNETLAB), "set-key", "--name", "t-conc", "--vnet", v, "--site", s, "--key", key],
                                  env=lab.env, cwd=lab.cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for v, s in ends]
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0 and "Traceback" not in err, err
        assert [_key(lab, "t-conc", v, s) for v, s in ends] == [key, key], f"round {round_}: an update was lost"
    deadline = time.monotonic() + 15  # the running gateways hold the recorded (equal) keys: the tunnel comes up
    while time.monotonic() < deadline and any(c["connectivity_state"] != "Connected"
                                              for c in lab.status("t-conc").values()):
        time.sleep(0.2)
    assert all(c["connectivity_state"] == "Connected" for c in lab.status("t-conc").values())
    assert lab.ping("t-conc", "TestVNet1/default", "10.41.0.4")


def test_a_killed_gateway_daemon_heals_itself(lab):
    """kill -9 of any gateway's daemon: the supervisor restarts it, traffic crosses again within 10 s
    with no command typed, and an event names the restart."""
    cases = [("t-heal", None, [("TestVNet1", "TestVNet1/default", "10.41.0.4"),
                               ("TestVNet4", "TestVNet4/default", "10.11.0.4")]),
             ("t-heal3", PLANS / "three-vnet-chain.yaml", [("VNetA", "VNetA/default", None),
                                                           ("VNetB", "VNetB/default", None),
                                                           ("VNetC", "VNetC/default", None)])]
    for name, plan, gateways in cases:
        assert lab.cli("up", *([str(plan)] if plan else []), "--name", name).returncode == 0
        hosts = json.loads(lab.cli("nodes", "--name", name, "--json").stdout)["nodes"]
        address = {n["node"]: n["address"] for n in hosts}
        for gateway, src, dst in gateways:
            if dst is None:  # the chain: a host of a neighbour VNet
                peer = {"VNetA": "VNetB", "VNetB": "VNetC", "VNetC": "VNetB"}[gateway]
                dst = address[f"{peer}/default"]
            pid = charon_pid(lab, name, gateway)
            os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            while True:
                if lab.ping(name, src, dst):
                    break
                assert time.monotonic() - killed < 10, f"{gateway}: no traffic {time.monotonic() - killed:.1f} s after kill -9"
            healed = time.monotonic() - killed
            assert charon_pid(lab, name, gateway) != pid  # a new daemon, journalled (down removes it)
            assert os.getsid(charon_pid(lab, name, gateway)) == os.getsid(0)  # see test_lab.assert_in_callers_session
            deadline = time.monotonic() + 5
            while not _restart_logged(lab, name, gateway):
                assert time.monotonic() < deadline, f"{gateway}: no restart event"
                time.sleep(0.1)
            gw = json.loads(lab.cli("gateway", "--name", name, "--vnet", gateway, "--json").stdout)
            assert gw["State"] == "Provisioned"  # the daemon's live answer
            print(f"{name} {gateway}: traffic again {healed:.2f} s after kill -9")


def test_a_daemon_that_lives_but_never_answers_is_restarted(lab):
    """A wedged daemon (strongSwan #566: alive, deadlocked, silent for good; here SIGSTOP): the
    supervisor stops it and starts a new one once it has answered nothing for its limit, and says why."""
    from emulator.gateways import SILENT_AFTER_S
    from emulator.workers.monitor import HEALTH_EVERY_S, WEDGED_AFTER_S

    name = "t-wedged"
    assert lab.cli("up", "--name", name).returncode == 0
    pid = charon_pid(lab, name, "TestVNet1")
    os.kill(pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        while charon_pid(lab, name, "TestVNet1") == pid:
            assert time.monotonic() - stopped < WEDGED_AFTER_S + 2 * (HEALTH_EVERY_S + SILENT_AFTER_S) + 10, \
                "the wedged daemon was left"
            time.sleep(0.5)
        restarted = time.monotonic() - stopped
        assert not live(pid)  # stopped by its pid, not left beside the new one
        while not lab.ping(name, "TestVNet1/default", "10.41.0.4"):
            assert time.monotonic() - stopped < restarted + 10
    finally:
        if live(pid):
            os.kill(pid, signal.SIGCONT)
    events = [json.loads(line) for line in (lab.state / name / "events.jsonl").read_text().splitlines()]
    assert any(e["id"] == 23402 and e["gateway"] == "TestVNet1" and "had answered nothing for" in e["message"]
               for e in events), events[-5:]
    print(f"wedged daemon: restarted {restarted:.1f} s after it stopped answering")


def _restart_logged(lab, name: str, gateway: str) -> bool:
    path = lab.state / name / "events.jsonl"
    return any(json.loads(line).get("id") == 23402 and json.loads(line)["gateway"] == gateway
               for line in path.read_text().splitlines() if line.strip())
