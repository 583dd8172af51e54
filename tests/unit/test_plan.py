"""Plans: the examples are valid, every bad plan fails with its expected message and exit 2."""

import json
import os
from pathlib import Path

import pytest

from emulator.plan import load_plan
from tests.conftest import DATA, PLANS

BAD = sorted((DATA / "bad-plans").glob("*.yaml"))


def expectation(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} must start with '# expect: <message>'"
    return first[len("# expect: "):]


def test_at_least_thirty_bad_plans():
    assert len(BAD) >= 30


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_plan_is_refused_with_its_message(path, run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("VNETLAB_STATE_DIR", str(tmp_path / "state"))
    code, out, err = run_cli("validate", str(path))
    assert code == 2
    assert expectation(path) in err
    assert "Traceback" not in err
    assert f"{path}:" in err  # names the file
    assert not (tmp_path / "state").exists()  # creates nothing


@pytest.mark.parametrize("path", sorted(PLANS.glob("*.yaml")), ids=lambda p: p.stem)
def test_example_plans_are_valid(path, run_cli):
    code, out, err = run_cli("validate", str(path))
    assert code == 0, err
    assert "is valid" in out


def test_default_plan_is_the_walkthrough(run_cli):
    code, out, _ = run_cli("validate", "--json")
    assert code == 0
    data = json.loads(out)
    vnets = {v["name"]: v for v in data["vnets"]}
    assert vnets["TestVNet1"]["address_space"] == ["10.11.0.0/16", "10.12.0.0/16"]
    assert vnets["TestVNet4"]["address_space"] == ["10.41.0.0/16", "10.42.0.0/16"]
    assert vnets["TestVNet1"]["gateway_subnet"] == "10.11.1.0/27"
    assert vnets["TestVNet1"]["location"] == "East US" and vnets["TestVNet4"]["location"] == "West US"
    assert {v["gateway_sku"] for v in vnets.values()} == {"Standard"}
    assert {(c["vnet"], c["local_site"]) for c in data["connections"]} == {
        ("TestVNet1", "VNet4Local"), ("TestVNet4", "VNet1Local")}
    plan, _ = load_plan(None)
    assert {c.shared_key.reveal() for c in plan.connections} == {"A1b2C3D4"}
    assert "A1b2C3D4" not in out


def test_errors_carry_yaml_line_numbers(run_cli):
    code, _, err = run_cli("validate", str(DATA / "bad-plans" / "unknown-site.yaml"))
    assert code == 2
    assert "unknown-site.yaml:27:" in err


def test_all_errors_reported_at_once(tmp_path, run_cli):
    bad = tmp_path / "two.yaml"
    text = (PLANS / "classic-vnet-to-vnet.yaml").read_text()
    bad.write_text(text.replace("10.11.0.0/24}", "10.13.0.0/24}").replace("local_site: VNet4Local,", "local_site: Nope,"))
    code, _, err = run_cli("validate", str(bad))
    assert code == 2
    assert "outside the VNet's address space" in err and "unknown local site 'Nope'" in err
    assert "2 errors" in err


def test_missing_key_and_missing_mirror_are_warnings(tmp_path, run_cli):
    plan = tmp_path / "p.yaml"
    text = (PLANS / "classic-vnet-to-vnet.yaml").read_text()
    plan.write_text(text.replace(", shared_key: A1b2C3D4}", "}", 1).replace(
        "  - {vnet: TestVNet4, local_site: VNet1Local, shared_key: A1b2C3D4}\n", ""))
    code, _, err = run_cli("validate", str(plan))
    assert code == 0
    assert "no shared key yet" in err
    assert "no mirror: TestVNet4 has no connection back to TestVNet1" in err


def test_small_gateway_subnet_warns(tmp_path, run_cli):
    plan = tmp_path / "p.yaml"
    plan.write_text((PLANS / "classic-vnet-to-vnet.yaml").read_text().replace("10.11.1.0/27", "10.11.1.0/29"))
    code, _, err = run_cli("validate", str(plan))
    assert code == 0 and "/27 or /28 is recommended" in err


def test_keys_never_printed(run_cli):
    for argv in (["validate"], ["validate", "--json"], ["export-netcfg"]):
        code, out, err = run_cli(*argv)
        assert code == 0
        assert "A1b2C3D4" not in out + err


def test_missing_file_is_bad_input(run_cli):
    code, _, err = run_cli("validate", "/nonexistent/plan.yaml")
    assert code == 2 and "no such plan file" in err


def test_help_teaches(run_cli):
    code, out, _ = run_cli("--help")
    assert code == 0
    assert "exit codes" in out and "vnetlab up" in out
    code, out, _ = run_cli("up", "--help")
    assert code == 0 and "--dataplane" in out and "--timeout" in out


@pytest.mark.parametrize("argv,code,message", [
    (["render", "-o", "/proc/nope/x"], 2, "cannot write the configs"),
    (["import-netcfg", "/nonexistent.xml"], 2, "no such netcfg file"),
    (["import-netcfg", "/etc/hostname"], 2, "malformed XML"),
    (["export-netcfg", "/nonexistent.yaml"], 2, "no such plan file"),
    (["export-netcfg", "-o", "/proc/nope/x.xml"], 2, "cannot write"),
    (["validate", "/etc"], 2, "is a directory; give a plan file"),
    (["graph", "-o", "/tmp/x.pdf"], 2, "give a .svg or .png file"),
    (["up", "--name", "BAD_NAME"], 2, "not a valid lab name"),
    (["demo", "nope"], 2, "invalid choice"),
    (["verify", "--duration", "0"], 2, "--duration must be between"),
])
def test_bad_invocations_are_clear(argv, code, message, run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("VNETLAB_STATE_DIR", str(tmp_path / "state"))
    got, out, err = run_cli(*argv)
    assert got == code and message in out + err and "Traceback" not in err


def test_lab_commands_without_a_lab_say_so(run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("VNETLAB_STATE_DIR", str(tmp_path / "state"))
    for argv in (["status"], ["connection", "--vnet", "TestVNet1"], ["set-key", "--vnet", "A", "--site", "B",
                                                                      "--key", "C"], ["exec", "X", "--", "true"]):
        code, _, err = run_cli(*argv)
        assert code == 3 and "no lab is running" in err


def _walkthrough(tmp_path, old: str, new: str) -> Path:
    text = (PLANS / "classic-vnet-to-vnet.yaml").read_text()
    assert old in text
    path = tmp_path / "plan.yaml"
    path.write_text(text.replace(old, new, 1))
    return path


def test_every_bad_field_of_an_ipsec_block_is_listed(run_cli, tmp_path):
    path = _walkthrough(tmp_path, "{vnet: TestVNet1, local_site: VNet4Local, shared_key: A1b2C3D4}",
                        "{vnet: TestVNet1, local_site: VNet4Local, shared_key: A1b2C3D4, ipsec: {suite: gmc, "
                        "ike_lifetime: 5, esp_proposals: [aes256-shaa1]}}")
    code, _, err = run_cli("validate", str(path))
    assert code == 2
    for fld in ("ipsec.suite", "ipsec.ike_lifetime", "ipsec.esp_proposals"):
        assert fld in err


def test_mirrors_with_different_keys_warn(run_cli, tmp_path):
    path = _walkthrough(tmp_path, "{vnet: TestVNet4, local_site: VNet1Local, shared_key: A1b2C3D4}",
                        "{vnet: TestVNet4, local_site: VNet1Local, shared_key: Other1}")
    code, _, err = run_cli("validate", str(path))
    assert code == 0
    assert "differs from the key of TestVNet4's connection" in err
    assert "A1b2C3D4" not in err and "Other1" not in err


def test_proposals_with_nothing_in_common_warn(run_cli, tmp_path):
    path = _walkthrough(tmp_path, "{vnet: TestVNet4, local_site: VNet1Local, shared_key: A1b2C3D4}",
                        "{vnet: TestVNet4, local_site: VNet1Local, shared_key: A1b2C3D4, "
                        "ipsec: {ike_proposals: [aes128-sha512-modp2048]}}")
    code, _, err = run_cli("validate", str(path))
    assert code == 0
    assert "no IKE proposal in common" in err and "ESP" not in err.split("no IKE proposal")[0][-200:]


def test_compatible_proposals_written_differently_do_not_warn(run_cli, tmp_path):
    path = _walkthrough(tmp_path, "{vnet: TestVNet4, local_site: VNet1Local, shared_key: A1b2C3D4}",
                        "{vnet: TestVNet4, local_site: VNet1Local, shared_key: A1b2C3D4, "
                        "ipsec: {ike_proposals: [aes128-aes256-sha384-sha1-modp2048-modp1024]}}")
    code, _, err = run_cli("validate", str(path))
    assert code == 0 and "in common" not in err


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_plan_is_refused_by_up_before_anything_is_built(path, run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("VNETLAB_STATE_DIR", str(tmp_path / "state"))
    code, _, err = run_cli("up", str(path))
    assert code == 2 and expectation(path) in err
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("make, what", [
    (lambda d: "/dev/zero", "is a device"),
    (lambda d: (os.mkfifo(d / "fifo"), str(d / "fifo"))[1], "is a FIFO"),
    (lambda d: str(d), "is a directory"),
    (lambda d: ((d / "big.yaml").write_bytes(b"#" * 1_000_001), str(d / "big.yaml"))[1], "larger than 1,000,000"),
])
def test_input_files_that_are_no_plan_are_refused_at_once(make, what, run_cli, tmp_path):
    code, _, err = run_cli("validate", make(tmp_path))
    assert code == 2 and what in err


@pytest.mark.parametrize("value", ["-1", "0", "nan", "100000"])
def test_up_timeout_out_of_range_is_refused(value, run_cli):
    code, _, err = run_cli("up", "--timeout", value)
    assert code == 2 and "--timeout" in err
