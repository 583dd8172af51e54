"""Rendering: golden files per example plan, file modes, and the vici messages read back from them."""

import os
import stat
from pathlib import Path

import pytest

from emulator.plan import load_plan
from emulator.render import UnsafeValue, _conf, render_topology, write_rendered
from emulator.swanconf import read_gateway_config
from emulator.topology import build_topology
from tests.conftest import PLANS

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
BASE = Path("/LAB")  # rendered paths are made relative to this for comparison


def rendered(plan_file: Path):
    plan, _ = load_plan(plan_file)
    return render_topology(build_topology(plan), BASE, "kernel")


@pytest.mark.parametrize("plan_file", sorted(PLANS.glob("*.yaml")), ids=lambda p: p.stem)
def test_golden(plan_file):
    """Regenerate with: .venv/bin/python tests/regen_golden.py"""
    for r in rendered(plan_file):
        for name, text in r.files.items():
            golden = GOLDEN / plan_file.stem / r.gateway.name / name
            assert golden.exists(), f"missing golden file {golden}"
            assert text == golden.read_text(), f"{golden} differs; if intended, run tests/regen_golden.py"


def test_secret_files_are_private(tmp_path):
    plan, _ = load_plan(None)
    out = render_topology(build_topology(plan), tmp_path, "libipsec")
    write_rendered(out)
    for r in out:
        assert stat.S_IMODE(os.stat(r.directory).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(r.directory / "secrets.conf").st_mode) == 0o600
        assert "A1b2C3D4" not in (r.directory / "swanctl.conf").read_text()
        assert "kernel-libipsec kernel-netlink" in (r.directory / "strongswan.conf").read_text()


def test_vici_messages_from_rendered_files(tmp_path):
    plan, _ = load_plan(None)
    out = render_topology(build_topology(plan), tmp_path, "kernel")
    write_rendered(out)
    cfg = read_gateway_config(out[0].directory)
    conn = cfg.connections["VNet4Local"]
    assert conn["remote_addrs"] == ["203.0.113.3"]
    assert conn["children"]["VNet4Local"]["local_ts"] == ["10.11.0.0/16", "10.12.0.0/16"]
    assert conn["proposals"][0] == "aes256gcm16-prfsha256-modp1024"
    assert cfg.secrets == [{"id": "ike-VNet4Local", "type": "IKE", "data": "A1b2C3D4",
                            "owners": ["203.0.113.1", "203.0.113.3"]}]


def test_ikev1_static_routing_uses_classic_policy_defaults(tmp_path):
    text = (PLANS / "vnet-to-vnet-plus-onprem.yaml").read_text()
    static = text.replace("gateway: {type: DynamicRouting, sku: Standard}", "gateway: {type: StaticRouting, sku: Basic}")
    static = static.replace("  - {vnet: TestVNet1, local_site: VNet4Local, shared_key: A1b2C3D4}\n", "")
    static = static.replace("  - {vnet: TestVNet4, local_site: VNet1Local, shared_key: A1b2C3D4}\n", "")
    (tmp_path / "p.yaml").write_text(static)
    plan, _ = load_plan(tmp_path / "p.yaml")
    files = render_topology(build_topology(plan), BASE, "kernel")[0].files["swanctl.conf"]
    assert "version = 1" in files and "rekey_time = 28800s" in files and "dpd_delay" not in files
    assert "esp_proposals = aes256gcm16,aes256-sha1,aes128-sha1,3des-sha1" in files


@pytest.mark.parametrize("value", ["a\nb", "x { y", "k = v", "a#b", "}"])
def test_conf_filter_refuses_syntax(value):
    with pytest.raises(UnsafeValue):
        _conf(value)
