"""netcfg import/export: every real fixture imports or is refused clearly; export is stable."""

import pytest
import yaml

from emulator.netcfg import import_netcfg
from emulator.plan import parse_plan_text
from emulator.problems import PlanError
from tests.conftest import FIXTURES, PLANS

EXPECTED = {  # fixture -> (VNets, local sites, connections, a warning that must be there)
    "vnet-to-vnet-pair-affinitygroup.xml": (2, 2, 2, "191.239.68.0 is a real public address and is not used"),
    "three-vnets-one-site-dns.xml": (3, 1, 3, "no shared key yet"),
    "three-vnets-one-site-location.xml": (3, 1, 3, "157.59.34.62 is a real public address"),
    "point-to-site-only.xml": (1, 0, 0, "/27 or /28 is recommended"),
    "no-gateway.xml": (1, 0, 0, "affinity group 'LUC-AFFINITYGROUP' imported as the location"),
    "minimal-name-with-spaces.xml": (1, 0, 0, "imported as 'Buddy-Southeast-Asia-NET'"),
}


def test_every_fixture_is_covered():
    assert {p.name for p in FIXTURES.glob("*.xml")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_imports(name, run_cli, tmp_path):
    vnets, sites, conns, warning = EXPECTED[name]
    out = tmp_path / "plan.yaml"
    code, _, err = run_cli("import-netcfg", str(FIXTURES / name), "-o", str(out))
    assert code == 0, err
    assert warning in err
    plan, _ = parse_plan_text(out.read_text(), str(out))
    assert (len(plan.vnets), len(plan.local_sites), len(plan.connections)) == (vnets, sites, conns)
    assert all(s.gateway_ip is None for s in plan.local_sites)  # real addresses never become lab addresses
    assert "191.239" not in out.read_text() and "157.59.34.62" not in out.read_text()


def test_leading_zero_octets_are_read():
    _, plan, _ = import_netcfg((FIXTURES / "vnet-to-vnet-pair-affinitygroup.xml").read_text(), "f.xml")
    assert str(plan.vnets[0].gateway_subnet) == "192.168.0.32/29"
    assert plan.vnet_of_site(plan.local_sites[0]).name == plan.vnets[0].name


def test_options_set_gateway_type_and_sku(run_cli, tmp_path):
    out = tmp_path / "p.yaml"
    code, _, err = run_cli("import-netcfg", str(FIXTURES / "three-vnets-one-site-dns.xml"), "-o", str(out),
                           "--sku", "HighPerformance")
    assert code == 0, err
    assert {v["gateway"]["sku"] for v in yaml.safe_load(out.read_text())["vnets"].values()} == {"HighPerformance"}


WITH_FIXED_ADDRESSES = {"walkthrough-start"}  # local sites that hold an address, not 'auto'


@pytest.mark.parametrize("plan", [p for p in sorted(PLANS.glob("*.yaml")) if p.stem not in WITH_FIXED_ADDRESSES],
                         ids=lambda p: p.stem)
def test_export_import_export_is_stable(plan, run_cli, tmp_path):
    code, first, _ = run_cli("export-netcfg", str(plan))
    assert code == 0
    (tmp_path / "a.xml").write_text(first)
    code, _, err = run_cli("import-netcfg", str(tmp_path / "a.xml"), "-o", str(tmp_path / "b.yaml"))
    assert code == 0, err
    code, second, _ = run_cli("export-netcfg", str(tmp_path / "b.yaml"))
    assert code == 0 and second == first


BOMB = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<NetworkConfiguration xmlns="http://schemas.microsoft.com/ServiceHosting/2011/07/NetworkConfiguration">&lol2;</NetworkConfiguration>
"""
EXTERNAL = """<?xml version="1.0"?>
<!DOCTYPE x [<!ENTITY ext SYSTEM "file:///etc/passwd">]>
<NetworkConfiguration xmlns="http://schemas.microsoft.com/ServiceHosting/2011/07/NetworkConfiguration">&ext;</NetworkConfiguration>
"""


@pytest.mark.parametrize("text,message", [
    (BOMB, "DTDs and entities are not allowed"),
    (EXTERNAL, "DTDs and entities are not allowed"),
    ("<NetworkConfiguration>" + "x" * 1_100_000, "larger than"),
    ("<NetworkConfiguration", "malformed XML"),
    ("<Other xmlns='urn:x'/>", "root element must be NetworkConfiguration"),
    ("<NetworkConfiguration xmlns='urn:wrong'/>", "unexpected namespace"),
])
def test_hostile_or_wrong_files_are_refused(text, message):
    with pytest.raises(PlanError) as err:
        import_netcfg(text, "evil.xml")
    assert message in str(err.value)


def test_dedicated_connection_is_refused():
    text = (FIXTURES / "vnet-to-vnet-pair-affinitygroup.xml").read_text().replace('type="IPsec"', 'type="Dedicated"', 1)
    with pytest.raises(PlanError) as err:
        import_netcfg(text, "er.xml")
    assert "Dedicated is ExpressRoute" in str(err.value)


def test_import_turns_a_vnet_sites_address_into_auto(run_cli, tmp_path):
    """netcfg import never keeps a gateway address for a site that stands for a VNet (issue: the plan),
    so the walkthrough's dummy 5.4.3.2 becomes 'auto', with a warning that names it."""
    code, xml, _ = run_cli("export-netcfg", str(PLANS / "walkthrough-start.yaml"))
    assert code == 0 and xml.count("<VPNGatewayAddress>5.4.3.2</VPNGatewayAddress>") == 2
    (tmp_path / "w.xml").write_text(xml)
    code, _, err = run_cli("import-netcfg", str(tmp_path / "w.xml"), "-o", str(tmp_path / "w.yaml"))
    assert code == 0 and "5.4.3.2 is a real public address and is not used" in err
    plan, _ = parse_plan_text((tmp_path / "w.yaml").read_text(), "w.yaml")
    assert all(s.gateway_ip is None for s in plan.local_sites)


PAIR = FIXTURES / "vnet-to-vnet-pair-affinitygroup.xml"


def _variant(tmp_path, old: str, new: str, encoding: str = "utf-8"):
    text = PAIR.read_text(encoding="utf-8-sig")
    assert old in text
    path = tmp_path / "netcfg.xml"
    path.write_bytes(text.replace(old, new).encode(encoding))
    return path


def _line(path, needle: str) -> int:
    return next(i for i, ln in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1) if needle in ln)


def test_duplicate_vnet_names_are_an_error_not_a_merge(run_cli, tmp_path):
    path = _variant(tmp_path, 'VirtualNetworkSite name="BelleeTech-Internal-130629792808199783"',
                    'VirtualNetworkSite name="BelleeTech-External-130629793244984632"')
    code, _, err = run_cli("import-netcfg", str(path))
    assert code == 2
    assert "repeats another VirtualNetworkSite" in err
    second = [i for i, ln in enumerate(path.read_text().splitlines(), 1) if 'VirtualNetworkSite name="BelleeTech-Ext' in ln][1]
    assert f"netcfg.xml:{second}: error" in err


def test_names_colliding_after_cleaning_are_an_error(run_cli, tmp_path):
    text = PAIR.read_text(encoding="utf-8-sig")
    text = text.replace('VirtualNetworkSite name="BelleeTech-External-130629793244984632"', 'VirtualNetworkSite name="A B"')
    text = text.replace('VirtualNetworkSite name="BelleeTech-Internal-130629792808199783"', 'VirtualNetworkSite name="A-B"')
    path = tmp_path / "netcfg.xml"
    path.write_text(text)
    code, _, err = run_cli("import-netcfg", str(path))
    assert code == 2
    assert "collides with another VirtualNetworkSite" in err


def test_problems_name_the_line_of_their_element(run_cli, tmp_path):
    path = _variant(tmp_path, "<VPNGatewayAddress>191.239.68.0</VPNGatewayAddress>",
                    "<VPNGatewayAddress>vpn.example.com</VPNGatewayAddress>")
    code, _, err = run_cli("import-netcfg", str(path))
    assert code == 0
    site_line = _line(path, 'LocalNetworkSite name="BelleeTech-External')
    vnet_line = _line(path, 'VirtualNetworkSite name="BelleeTech-External')
    assert site_line != vnet_line
    assert f"netcfg.xml:{site_line}: warning: LocalNetworkSite[BelleeTech-External-130629793244984632]." \
           "VPNGatewayAddress: 'vpn.example.com' is not an IPv4 address" in err
    assert f"netcfg.xml:{vnet_line}: warning: vnets.BelleeTech-External-130629793244984632.gateway_subnet" in err
    (line,) = [ln for ln in err.splitlines() if "vpn.example.com" in ln]
    assert "real public address" not in line  # not called a real address: it is no address at all


def test_utf16_netcfg_imports(run_cli, tmp_path):
    path = _variant(tmp_path, 'encoding="utf-8"', 'encoding="utf-16"', encoding="utf-16")
    code, out, err = run_cli("import-netcfg", str(path))
    assert code == 0, err
    assert "BelleeTech-External-130629793244984632" in out


def test_undecodable_netcfg_is_refused_clearly(run_cli, tmp_path):
    path = tmp_path / "latin1.xml"
    path.write_bytes(PAIR.read_bytes().replace(b"MYLAB", "MYLÄB".encode("latin-1")))
    code, _, err = run_cli("import-netcfg", str(path))
    assert code == 2 and "is not UTF-8 text" in err and "Traceback" not in err
