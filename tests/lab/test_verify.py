"""`vnetlab verify` on real labs (issue: verification with scapy probes)."""

import json
import subprocess
from xml.etree import ElementTree

from tests.conftest import PLANS

DEFAULT = PLANS / "classic-vnet-to-vnet.yaml"


def verify(lab, name, *extra):
    res = lab.cli("verify", "--name", name, "--json", *extra, timeout=120)
    try:
        return res.returncode, json.loads(res.stdout), res
    except json.JSONDecodeError:
        raise AssertionError(f"verify printed no JSON (exit {res.returncode}):\n{res.stdout}\n{res.stderr}") from None


def test_default_plan_verifies_with_esp_and_pcap(lab, tmp_path, dataplane):
    assert lab.cli("up", "--name", "t-verify", "--dataplane", dataplane).returncode == 0
    code, data, res = verify(lab, "t-verify", "--pcap", str(tmp_path / "pcap"), "--junit", str(tmp_path / "j.xml"))
    assert code == 0, res.stdout + res.stderr
    assert data["passed"] is True
    reach = {(c["src"].split()[0], c["dst"].split()[0], c["proto"]) for c in data["checks"] if c["kind"] == "reach"}
    for src, dst in [("TestVNet1/default", "TestVNet4/default"), ("TestVNet1/default", "TestVNet4/space2"),
                     ("TestVNet1/space2", "TestVNet4/space2"), ("TestVNet4/default", "TestVNet1/space2"),
                     ("TestVNet4/space2", "TestVNet1/default")]:
        assert {(src, dst, p) for p in ("icmp", "tcp", "udp")} <= reach
    (esp,) = [c for c in data["checks"] if c["kind"] == "esp"]
    assert esp["ok"] and not esp["detail"].startswith("0 ESP")
    pcaps = sorted((tmp_path / "pcap").glob("*.pcap"))
    assert [p.name for p in pcaps] == ["TestVNet1.pcap", "TestVNet4.pcap"]  # named after the gateways
    dump = subprocess.run(["tcpdump", "-nr", str(pcaps[0])], capture_output=True, text=True)
    # raw ESP (IP protocol 50) on the kernel data plane; ESP in UDP 4500 on libipsec
    assert dump.returncode == 0 and ("ESP(spi" in dump.stdout or "UDP-encap" in dump.stdout), dump.stdout[:500]
    # every ESP packet between the two gateways crosses both backbone links: counted once, not twice
    on_one_link = sum("ESP(spi" in line for line in dump.stdout.splitlines())
    assert esp["detail"].startswith(f"{on_one_link} ESP packets"), (esp["detail"], on_one_link)
    suite = ElementTree.parse(tmp_path / "j.xml").getroot()
    assert suite.get("failures") == "0" and int(suite.get("tests")) == len(data["checks"])


def test_chain_does_not_transit(lab):
    assert lab.cli("up", str(PLANS / "three-vnet-chain.yaml"), "--name", "t-chain").returncode == 0
    code, data, res = verify(lab, "t-chain")
    assert code == 0, res.stdout
    isolation = [c for c in data["checks"] if c["kind"] == "isolation"]
    pairs = {(c["src"].split("/")[0], c["dst"].split("/")[0]) for c in isolation}
    assert pairs == {("VNetA", "VNetC"), ("VNetC", "VNetA")}
    assert all(c["ok"] for c in isolation)


def test_mismatched_keys_fail_and_nothing_in_clear(lab, tmp_path):
    plan = tmp_path / "mismatch.yaml"
    plan.write_text(DEFAULT.read_text().replace("local_site: VNet4Local, shared_key: A1b2C3D4",
                                                "local_site: VNet4Local, shared_key: Other123"))
    assert lab.cli("up", str(plan), "--name", "t-mismatch", "--timeout", "5").returncode == 1
    code, data, res = verify(lab, "t-mismatch")
    assert code == 1
    failed = [c for c in data["checks"] if not c["ok"]]
    assert failed and all(c["kind"] == "reach" for c in failed)
    assert all("pre-shared key mismatch" in c["detail"] and "VNet" in c["detail"] for c in failed)
    (esp,) = [c for c in data["checks"] if c["kind"] == "esp"]
    assert esp["ok"], esp["detail"]  # the fail-closed gateway put nothing in clear on the backbone
    assert "Other123" not in res.stdout + res.stderr


def test_throughput_with_standard_sku_cap(lab):
    assert lab.cli("up", "--name", "t-tput").returncode == 0
    code, data, res = verify(lab, "t-tput", "--throughput", "--duration", "2")
    assert code == 0, res.stdout
    tput = [c for c in data["checks"] if c["kind"] == "throughput"]
    tunnels = [c for c in tput if "TestVNet" in c["src"]]
    assert len(tunnels) == 2 and len(tput) == 3
    for c in tunnels:  # on the shaped link: within 10 % of 100 Mbit/s, or the data plane is proven slower
        assert 90 <= c["wire_mbps"] <= 110 or "slower than the 100 Mbit/s cap" in c["detail"], c
        assert 0 < c["mbps"] < c["wire_mbps"]  # goodput inside the tunnel is below the rate on the wire
    bare = [c for c in tput if "TestVNet" not in c["src"]][0]
    assert bare["mbps"] > max(c["mbps"] for c in tunnels)


def test_throughput_without_a_cap(lab, dataplane):
    """The raw data plane through each tunnel, against a bare veth in the same run. Its figure is
    printed for `make bench`, which runs the kernel case in the Debian guest (absolute figures
    under emulation mean little there: the ratio to the bare veth is the one to read)."""
    assert lab.cli("up", "--name", "t-raw", "--dataplane", dataplane, "--no-sku-limit").returncode == 0
    code, data, res = verify(lab, "t-raw", "--throughput", "--duration", "2")
    assert code == 0, res.stdout + res.stderr
    tput = [c for c in data["checks"] if c["kind"] == "throughput"]
    tunnels = sorted(c["mbps"] for c in tput if "TestVNet" in c["src"])
    (bare,) = [c["mbps"] for c in tput if "TestVNet" not in c["src"]]
    assert len(tunnels) == 2 and 0 < tunnels[-1] < bare
    median = (tunnels[0] + tunnels[1]) / 2
    print(f"\nthroughput [{dataplane}]: tunnel {median:.1f} Mbit/s, bare veth {bare:.1f} Mbit/s, "
          f"ratio {median / bare:.4f}")


def test_vnet_to_vnet_plus_onprem(lab):
    assert lab.cli("up", str(PLANS / "vnet-to-vnet-plus-onprem.yaml"), "--name", "t-onprem").returncode == 0
    code, data, res = verify(lab, "t-onprem")
    assert code == 0, res.stdout
    pairs = {(c["kind"], c["src"].split("/")[0], c["dst"].split("/")[0]) for c in data["checks"]}
    assert {("reach", "TestVNet1", "HQ"), ("reach", "HQ", "TestVNet1")} <= pairs
    assert {("isolation", "TestVNet4", "HQ"), ("isolation", "HQ", "TestVNet4")} <= pairs


def test_rate_below_the_cap_is_rechecked_without_the_shaper(lab, monkeypatch):
    """The branch verify takes when a shaped rate comes out below 90 % of the cap: lift the
    shaper, measure the raw data plane, put the shaper back, and blame the right one."""
    from emulator import lab as labmod
    from emulator.throughput import Direction, Rate, judge
    from emulator.verify import _hosts_by_space, Workers
    from netns import ops

    assert lab.cli("up", "--name", "t-judge").returncode == 0
    monkeypatch.setenv("VNETLAB_STATE_DIR", str(lab.state))
    running = labmod.open_lab("t-judge")
    gw = running.topology.gateway("TestVNet1")
    d = Direction(_hosts_by_space(running, "TestVNet1")[0], _hosts_by_space(running, "TestVNet4")[0], gw)
    workers = Workers(running)
    try:
        ok, why = judge(running, workers, d, Rate(goodput=9.0, wire=10.0), duration=1)
    finally:
        workers.stop_all()
    with ops.Namespace(gw.netns) as n:
        assert n.qdisc_kinds("bb") == ["tbf"]  # the shaper is back
    if "slower than the 100 Mbit/s cap" in why:
        assert ok  # a data plane slower than the cap is reported, not failed
    else:
        assert not ok and "below the 100 Mbit/s cap although the data plane does" in why
