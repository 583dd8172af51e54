"""The exchange made readable (issue 11): key tables for Wireshark, `capture`, `trace`.

tshark, Wireshark's own dissectors, is the independent oracle: what it decrypts with our key
tables, and only with them, proves the tables' format and content."""

import json
import os
import shutil
import stat
import subprocess
import time

import pytest

from netns.spawn import wait_for_word
from tests.conftest import PLANS
from tests.lab.conftest import VNETLAB

DEFAULT = PLANS / "classic-vnet-to-vnet.yaml"
PSK = "A1b2C3D4"
WRONG = "Wr0ngKey9f3c1e"

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None,
                                reason="tshark missing: apt-get install tshark (CI installs it)")


def tshark(pcap, *args, options=()):
    res = subprocess.run(["tshark", "-n", "-r", str(pcap), *options, *args], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "HOME": "/nonexistent"})  # no personal tables
    assert res.returncode == 0, res.stderr
    return [line.split("\t") for line in res.stdout.splitlines() if line]


def start_capture(lab, name, out, seconds):
    """`vnetlab capture --duration`, returned once every link is captured: it says "capturing" then,
    and its seconds count from there. A fixed sleep instead lost the exchange to a slow start in CI."""
    proc = subprocess.Popen([*[str(VNETLAB)], "capture", "--name", name, "-o", str(out), "--duration", str(seconds),
                             "--json"], env=lab.env, cwd=lab.cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert listening(proc)
    return proc


def listening(proc) -> bool:
    said, _ = wait_for_word(proc.stderr.fileno(), b"capturing ", 60)
    return said


def finish(proc):
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return json.loads(out)


def wait_for(condition, seconds=10.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_psk_mismatch_shows_authentication_failed_only_with_the_tables(lab, tmp_path):
    assert lab.cli("up", "--name", "t-wire").returncode == 0
    cap = start_capture(lab, "t-wire", tmp_path / "cap", 3)
    assert lab.cli("set-key", "--name", "t-wire", "--vnet", "TestVNet1", "--site", "VNet4Local",
                   "--key", WRONG).returncode == 0
    summary = finish(cap)
    pcap = tmp_path / "cap" / "TestVNet1.pcap"
    options = summary["tshark"][3:]
    auth_failed = ["-Y", "isakmp.exchangetype == 35 && isakmp.notify.msgtype == 24", "-T", "fields",
                   "-e", "ip.src", "-e", "ip.dst"]
    with_tables = tshark(pcap, *auth_failed, options=options)
    assert with_tables and all(r == ["203.0.113.3", "203.0.113.1"] for r in with_tables), with_tables
    assert tshark(pcap, *auth_failed) == []  # without the tables the notify stays inside SK{}
    # the Wireshark folder works as well as the -o options
    conf = tmp_path / "cap" / "wireshark"
    res = subprocess.run(["tshark", "-n", "-r", str(pcap), *auth_failed], capture_output=True, text=True,
                         env={**os.environ, "WIRESHARK_CONFIG_DIR": str(conf)})
    assert res.stdout.strip(), res.stderr
    for name in ("esp_sa", "ikev2_decryption_table", "ikev1_decryption_table", "preferences"):
        assert stat.S_IMODE((conf / name).stat().st_mode) == 0o600
    assert stat.S_IMODE(conf.stat().st_mode) == 0o700

    trace = lab.cli("trace", "--name", "t-wire", "--json")
    messages = [json.loads(line) for line in trace.stdout.splitlines()]
    exchanges = {m["exchange"] for m in messages}
    assert {"IKE_SA_INIT", "IKE_AUTH"} <= exchanges
    failed = [m for m in messages if m["exchange"] == "IKE_AUTH" and "AUTHENTICATION_FAILED" in m["notifies"]]
    assert failed and failed[-1]["response"] and failed[-1]["src_name"] == "TestVNet4"
    text = lab.cli("trace", "--name", "t-wire", "--vnet", "TestVNet1").stdout
    assert "IKE_AUTH response msg 1: N(AUTHENTICATION_FAILED)" in text

    # the pre-shared keys are nowhere: pcaps, tables, the lab's key records, the trace
    private = [p for p in (tmp_path / "cap").rglob("*") if p.is_file()]
    private += list((lab.state / "t-wire").glob("*/keys.jsonl")) + [lab.state / "t-wire" / "ike.pcap"]
    for path in private:
        data = path.read_bytes()
        assert PSK.encode() not in data and WRONG.encode() not in data, path
    for path in (lab.state / "t-wire").glob("*/keys.jsonl"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert PSK not in trace.stdout + text and WRONG not in trace.stdout + text


def test_selector_mismatch_shows_ts_unacceptable(lab, tmp_path):
    """A misconfigured on-premises device, as it happens for real: its own networks edited by hand
    to 192.168.99.0/24, while Azure's local network site still says 192.168.10.0/24."""
    assert lab.cli("up", str(PLANS / "vnet-to-vnet-plus-onprem.yaml"), "--name", "t-ts").returncode == 0
    conf = lab.state / "t-ts" / "HQ" / "swanctl.conf"
    edited = tmp_path / "hq-swanctl.conf"
    edited.write_text(conf.read_text().replace("local_ts = 192.168.10.0/24", "local_ts = 192.168.99.0/24")
                      .replace("include secrets.conf", f"include {conf.parent / 'secrets.conf'}"))
    res = lab.exec_("t-ts", "HQ", "swanctl", "--load-conns", "--file", str(edited))
    assert res.returncode == 0, res.stdout + res.stderr
    cap = start_capture(lab, "t-ts", tmp_path / "cap", 2.5)
    assert lab.cli("disconnect", "--name", "t-ts", "--vnet", "TestVNet1", "--site", "HQ").returncode == 0
    lab.cli("connect", "--name", "t-ts", "--vnet", "TestVNet1", "--site", "HQ")
    summary = finish(cap)
    pcap = tmp_path / "cap" / "HQ.pcap"
    ts = ["-Y", "isakmp.notify.msgtype == 38", "-T", "fields", "-e", "ip.src", "-e", "isakmp.exchangetype"]
    rows = tshark(pcap, *ts, options=summary["tshark"][3:])
    assert rows and all(r[0] == "198.51.100.1" for r in rows), rows
    assert tshark(pcap, *ts) == []
    trace = [json.loads(line) for line in lab.cli("trace", "--name", "t-ts", "--site", "HQ", "--json").stdout.splitlines()]
    assert any("TS_UNACCEPTABLE" in m["notifies"] and m["src_name"] == "HQ" for m in trace)
    assert all(m["src_name"] == "HQ" or m["dst_name"] == "HQ" for m in trace)


def test_esp_decrypts_both_ways_through_child_rekeys(lab, tmp_path, dataplane):
    assert lab.cli("up", "--name", "t-esp", "--dataplane", dataplane).returncode == 0
    # open-ended, stopped by SIGTERM once the traffic is done: no timing to guess (the kernel data
    # plane runs in an emulated guest, where everything is slower)
    cap = subprocess.Popen([str(VNETLAB), "capture", "--name", "t-esp", "-o", str(tmp_path / "cap"), "--json"],
                           env=lab.env, cwd=lab.cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert listening(cap)
    ping = subprocess.Popen(["ip", "netns", "exec", "t-esp.v.TestVNet1.default", "ping", "-q", "-i", "0.05",
                             "-w", "120", "10.41.0.4"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(2):
            time.sleep(1)
            res = lab.exec_("t-esp", "TestVNet1", "swanctl", "--rekey", "--child", "VNet4Local")
            assert res.returncode == 0, res.stdout + res.stderr
        time.sleep(1)
    finally:
        ping.terminate()
        ping.communicate(timeout=20)
        cap.terminate()
    summary = finish(cap)
    pcap = tmp_path / "cap" / "TestVNet1.pcap"
    fields = ["-Y", "esp", "-o", "esp.enable_authentication_check:TRUE", "-T", "fields", "-e", "ip.src",
              "-e", "esp.spi", "-e", "esp.icv_good", "-e", "icmp.type"]
    rows = tshark(pcap, *fields, options=summary["tshark"][3:])
    assert len(rows) > 40, rows[:5]
    undecrypted = [r for r in rows if r[2:] != ["1", "8"] and r[2:] != ["1", "0"]]
    assert not undecrypted, undecrypted[:5]  # every ESP packet: ICV correct, an echo request or reply inside
    out_spis = {r[1] for r in rows if r[0].split(",")[0] == "203.0.113.1"}
    in_spis = {r[1] for r in rows if r[0].split(",")[0] == "203.0.113.3"}
    assert len(out_spis) >= 3 and len(in_spis) >= 3, (out_spis, in_spis)  # the first SA and two rekeys
    assert {r[3] for r in rows} == {"8", "0"}  # requests and replies: both directions decrypted
    if dataplane == "libipsec":
        assert tshark(pcap, "-Y", "udp.port == 4500 && esp", "-T", "fields", "-e", "esp.spi",
                      options=summary["tshark"][3:])  # UDP-encapsulated ESP
    else:
        assert tshark(pcap, "-Y", "ip.proto == 50", "-T", "fields", "-e", "esp.spi",
                      options=summary["tshark"][3:])  # plain ESP
    trace = [json.loads(line) for line in lab.cli("trace", "--name", "t-esp", "--json").stdout.splitlines()]
    rekeys = [m for m in trace if m["exchange"] == "CREATE_CHILD_SA"]
    assert len(rekeys) >= 4 and all(m["decrypted"] for m in rekeys)
    assert any("N(REKEY_SA)" in m["payloads"] for m in rekeys)


def test_trace_follow_and_bad_choice(lab):
    assert lab.cli("up", "--name", "t-follow").returncode == 0
    proc = subprocess.Popen([*[str(VNETLAB)], "trace", "--name", "t-follow", "--follow", "--json"], env=lab.env,
                            cwd=lab.cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        assert lab.exec_("t-follow", "TestVNet4", "swanctl", "--rekey", "--ike", "VNet1Local").returncode == 0
        time.sleep(1.5)
    finally:
        proc.terminate()
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    messages = [json.loads(line) for line in out.splitlines()]
    late = [m for m in messages if m["exchange"] == "CREATE_CHILD_SA"]
    assert late and late[0]["src_name"] == "TestVNet4" and late[0]["decrypted"], messages[-3:]
    bad = lab.cli("trace", "--name", "t-follow", "--site", "Nowhere")
    assert bad.returncode == 2 and "--site Nowhere" in bad.stderr and "Traceback" not in bad.stderr
    bad = lab.cli("capture", "--name", "t-follow", "--vnet", "TestVNet9", "-o", "/tmp/x")
    assert bad.returncode == 2 and "TestVNet1, TestVNet4" in bad.stderr


def test_the_recording_holds_every_message_of_a_burst(lab, tmp_path):
    """A 10-VNet mesh comes up in one burst of 180 IKE messages: the lab's recording must hold each
    one (with tcpdump's default ring of 8 packets, a quarter of them were lost)."""
    from tests.bench import mesh

    plan = tmp_path / "mesh.yaml"
    plan.write_text(mesh(10))
    assert lab.cli("up", str(plan), "--name", "t-burst", timeout=120).returncode == 0
    messages = [json.loads(line) for line in lab.cli("trace", "--name", "t-burst", "--json").stdout.splitlines()]
    first = [m for m in messages if m["exchange"] in ("IKE_SA_INIT", "IKE_AUTH")]
    pairs = {frozenset((m["src"], m["dst"])) for m in first}
    assert len(pairs) == 45
    for pair in pairs:
        kinds = sorted((m["exchange"], m["response"]) for m in first if frozenset((m["src"], m["dst"])) == pair)
        assert kinds == [("IKE_AUTH", False), ("IKE_AUTH", True), ("IKE_SA_INIT", False), ("IKE_SA_INIT", True)], \
            (pair, kinds)
    assert all(m["decrypted"] for m in first if m["exchange"] == "IKE_AUTH")


def test_a_killed_capture_leaves_no_tcpdump_running(lab, tmp_path):
    import signal

    from tests.lab.conftest import live

    assert lab.cli("up", "--name", "t-kill").returncode == 0
    proc = subprocess.Popen([str(VNETLAB), "capture", "--name", "t-kill", "-o", str(tmp_path / "cap")], env=lab.env,
                            cwd=lab.cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert listening(proc)
    tcpdumps = [e["pid"] for e in lab.journal("t-kill") if e["kind"] == "process" and e["what"] == "capture"]
    assert len(tcpdumps) == 2 and all(live(p) for p in tcpdumps)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    assert wait_for(lambda: not any(live(p) for p in tcpdumps), 5), "tcpdump outlived a killed capture"
    assert lab.status("t-kill")[("TestVNet1", "VNet4Local")]["connectivity_state"] == "Connected"


def test_ikev1_phase1_table_opens_main_mode(lab, tmp_path):
    """Wireshark's ikev1_decryption_table (initiator cookie, phase 1 key): with it, tshark reads the
    encrypted ID payloads of Main Mode 5/6; without it, it cannot."""
    plan = tmp_path / "v1.yaml"
    plan.write_text(DEFAULT.read_text().replace("shared_key: A1b2C3D4}", "shared_key: A1b2C3D4, ike_version: 1}"))
    assert lab.cli("up", str(plan), "--name", "t-v1").returncode == 0
    cap = start_capture(lab, "t-v1", tmp_path / "cap", 3)
    assert lab.cli("disconnect", "--name", "t-v1", "--vnet", "TestVNet1", "--site", "VNet4Local").returncode == 0
    assert lab.cli("connect", "--name", "t-v1", "--vnet", "TestVNet1", "--site", "VNet4Local").returncode == 0
    summary = finish(cap)
    assert summary["ikev1_sas"] >= 1
    ids = ["-Y", "isakmp.id.type", "-T", "fields", "-e", "ip.src", "-e", "isakmp.id.type"]
    rows = tshark(tmp_path / "cap" / "TestVNet1.pcap", *ids, options=summary["tshark"][3:])
    assert {r[0] for r in rows} == {"203.0.113.1", "203.0.113.3"}, rows  # message 5 and message 6
    assert tshark(tmp_path / "cap" / "TestVNet1.pcap", *ids) == []
