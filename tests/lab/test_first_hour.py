"""A newcomer's first hour (issue 14): the installed CLI, `exec` with strongSwan's own tools,
keys kept off the command line, the plan's own connectivity tests, several labs at once."""

import json
import signal
import subprocess
import time
import xml.etree.ElementTree as ET

from tests.conftest import PLANS
from tests.lab.conftest import VNETLAB

DEFAULT = PLANS / "classic-vnet-to-vnet.yaml"
TESTS_PLAN = PLANS / "connectivity-tests.yaml"


def test_swanctl_works_in_a_gateway_namespace(lab, dataplane):
    assert lab.cli("up", "--name", "t-swan", "--dataplane", dataplane).returncode == 0
    res = lab.exec_("t-swan", "TestVNet1", "swanctl", "--list-sas")
    assert res.returncode == 0, res.stderr
    assert "VNet4Local" in res.stdout and "ESTABLISHED" in res.stdout and "INSTALLED" in res.stdout
    res = lab.exec_("t-swan", "TestVNet4", "swanctl", "--list-conns")
    assert res.returncode == 0 and "VNet1Local" in res.stdout


def test_exec_exit_status_is_the_commands_own(lab, tmp_path):
    assert lab.cli("up", "--name", "t-exec").returncode == 0
    data = tmp_path / "data.txt"
    data.write_text("not a program\n")
    data.chmod(0o644)
    missing = lab.exec_("t-exec", "TestVNet1/default", "/nonexistent")
    assert missing.returncode == 127 and "command not found" in missing.stderr
    assert lab.exec_("t-exec", "TestVNet1/default", "sh", "-c", "exit 7").returncode == 7
    assert lab.exec_("t-exec", "TestVNet1/default", str(data)).returncode == 126
    proc = subprocess.Popen([str(VNETLAB), "exec", "--name", "t-exec", "TestVNet1/default", "--", "sleep", "30"],
                            env=lab.env, cwd=lab.cwd)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == -signal.SIGTERM  # killed by the signal itself, as a shell reports 143


def test_set_key_reads_the_key_from_stdin_and_environment_not_argv(lab):
    assert lab.cli("up", "--name", "t-keyin").returncode == 0
    res = lab.cli("set-key", "--name", "t-keyin", "--vnet", "TestVNet1", "--site", "VNet4Local", input="Piped123\n")
    assert res.returncode == 0, res.stderr
    got = lab.cli("get-key", "--name", "t-keyin", "--vnet", "TestVNet1", "--site", "VNet4Local", "--json")
    assert json.loads(got.stdout)["Value"] == "Piped123"
    lab.env["VNETLAB_SHARED_KEY"] = "FromEnv456"
    try:
        res = lab.cli("set-key", "--name", "t-keyin", "--vnet", "TestVNet1", "--site", "VNet4Local")
    finally:
        del lab.env["VNETLAB_SHARED_KEY"]
    assert res.returncode == 0 and "FromEnv456" not in res.stdout + res.stderr
    got = lab.cli("get-key", "--name", "t-keyin", "--vnet", "TestVNet1", "--site", "VNet4Local", "--json")
    assert json.loads(got.stdout)["Value"] == "FromEnv456"
    empty = lab.cli("set-key", "--name", "t-keyin", "--vnet", "TestVNet1", "--site", "VNet4Local", input="")
    assert empty.returncode == 2 and "no key given" in empty.stderr


def test_plan_tests_pass_and_fail_in_table_json_and_junit(lab, tmp_path):
    plan = tmp_path / "tests.yaml"
    plan.write_text(TESTS_PLAN.read_text() + """  - name: web-must-be-blocked     # wrong on purpose: the tunnel carries it
    from: TestVNet4/default
    to: TestVNet1/default
    proto: tcp
    port: 8443
    expect: blocked
""")
    assert lab.cli("up", str(plan), "--name", "t-tests").returncode == 0
    junit = tmp_path / "junit.xml"
    res = lab.cli("verify", "--name", "t-tests", "--json", "--junit", str(junit))
    assert res.returncode == 1
    tests = {c["name"]: c for c in json.loads(res.stdout)["checks"] if c["kind"] == "test"}
    assert set(tests) == {"web-from-vnet1", "dns-to-second-space", "nothing-beyond-the-plan", "down-means-down",
                          "web-must-be-blocked"}
    assert all(tests[n]["ok"] for n in ("web-from-vnet1", "dns-to-second-space", "nothing-beyond-the-plan",
                                        "down-means-down"))
    assert "with TestVNet1/VNet4Local disconnected, expected blocked, no answer" in tests["down-means-down"]["detail"]
    # verify connected it again: the lab is as it was
    assert all(c["connectivity_state"] == "Connected" for c in lab.status("t-tests").values())
    assert not tests["web-must-be-blocked"]["ok"]
    assert "expected blocked, answered on port 8443" in tests["web-must-be-blocked"]["detail"]
    others = [c for c in json.loads(res.stdout)["checks"] if c["kind"] != "test"]
    assert others and all(c["ok"] for c in others)  # the only failure is the user's own check
    failures = [case.get("name") for case in ET.parse(junit).getroot() if case.find("failure") is not None]
    assert failures == ["test web-must-be-blocked/tcp TestVNet4/default (10.41.0.4) -> TestVNet1/default (10.11.0.4)"]
    table = lab.cli("verify", "--name", "t-tests")
    assert table.returncode == 1
    line = next(ln for ln in table.stdout.splitlines() if "web-must-be-blocked" in ln)
    assert "FAIL" in line and "test web-must-be-blocked" in line


def test_several_labs_commands_act_on_the_current_one(lab):
    assert lab.cli("up", "--name", "t-first").returncode == 0
    assert lab.cli("up", str(PLANS / "three-vnet-chain.yaml"), "--name", "t-second").returncode == 0
    res = lab.cli("status", "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["lab"] == "t-second"
    assert "the current lab" in res.stderr
    again = lab.cli("up", str(PLANS / "three-vnet-chain.yaml"), "--name", "t-second", "--reuse")
    assert again.returncode == 0 and "reusing it" in again.stderr
    other = lab.cli("up", "--name", "t-second", "--reuse")
    assert other.returncode == 3 and "from another plan" in other.stderr
    assert lab.cli("down").returncode == 0  # the current lab
    res = lab.cli("status", "--json")  # one lab left: it is the one
    assert res.returncode == 0 and json.loads(res.stdout)["lab"] == "t-first"


def test_onprem_rows_name_the_vnet_they_connect_to(lab):
    assert lab.cli("up", str(PLANS / "vnet-to-vnet-plus-onprem.yaml"), "--name", "t-onprem").returncode == 0
    res = lab.cli("status", "--name", "t-onprem")
    row = next(ln for ln in res.stdout.splitlines() if ln.startswith("HQ"))
    assert "HQ (on-premises)" in row and "-> TestVNet1" in row
    nodes = lab.cli("nodes", "--name", "t-onprem", "--json")
    data = json.loads(nodes.stdout)
    assert {"HQ", "backbone", "TestVNet1/default"} <= {n["node"] for n in data["nodes"]}
    assert any("ping" in hint for hint in data["try"])


def test_a_demo_never_touches_an_existing_lab(lab):
    assert lab.cli("up", "--name", "t-mine").returncode == 0
    res = lab.cli("demo", "psk-mismatch", "--name", "t-mine")
    assert res.returncode == 3 and "exists already" in res.stderr
    assert json.loads(lab.cli("status", "--name", "t-mine", "--json").stdout)["lab"] == "t-mine"
    assert all(c["connectivity_state"] == "Connected" for c in lab.status("t-mine").values())
