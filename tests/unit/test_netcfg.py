"""netcfg import/export: every real fixture imports or is refused clearly; export is stable."""

import pytest
import yaml

from emulator.netcfg import import_netcfg
from emulator.plan import parse_plan_text
from emulator.problems import PlanError
from tests.conftest import FIXTURES, PLANS

EXPECTED = {  # fixture -> (VNets, local sites, connections, a warning that must be there)
    "vnet-to-vnet-pair-affinitygroup.xml": (2, 2, 2, "191.239.68.0 is a real address and is not used"),
    "three-vnets-one-site-dns.xml": (3, 1, 3, "no shared key yet"),
    "three-vnets-one-site-location.xml": (3, 1, 3, "157.59.34.62 is a real address"),
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
    assert code == 0 and "5.4.3.2 is a real address and is not used" in err
    plan, _ = parse_plan_text((tmp_path / "w.yaml").read_text(), "w.yaml")
    assert all(s.gateway_ip is None for s in plan.local_sites)
