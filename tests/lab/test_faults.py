"""A lab under faults (issue 9): a dead gateway daemon gives a clear exit 3 and records nothing;
concurrent changes lose no update; connect and disconnect are idempotent."""

import json
import os
import signal
import subprocess
import time

from tests.lab.conftest import VNETLAB, live


def _charon_pid(lab, name: str, gateway: str) -> int:
    return next(e["pid"] for e in lab.journal(name) if e["kind"] == "process" and e["what"] == f"charon {gateway}")


def _key(lab, name: str, vnet: str, site: str) -> str:
    res = lab.cli("get-key", "--name", name, "--vnet", vnet, "--site", site, "--json")
    return json.loads(res.stdout)["Value"]


def test_changes_against_a_dead_daemon_fail_clearly_and_record_nothing(lab):
    assert lab.cli("up", "--name", "t-dead").returncode == 0
    pid = _charon_pid(lab, "t-dead", "TestVNet1")
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
    for round_ in range(20):
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
