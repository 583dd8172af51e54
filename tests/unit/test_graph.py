"""`vnetlab graph` renders plans to SVG and PNG naming every VNet and site."""

import pytest

from emulator.plan import load_plan
from tests.conftest import PLANS


@pytest.mark.parametrize("plan_file", sorted(PLANS.glob("*.yaml")), ids=lambda p: p.stem)
def test_svg_names_every_vnet_and_site(plan_file, run_cli, tmp_path):
    out = tmp_path / "g.svg"
    code, _, err = run_cli("graph", str(plan_file), "-o", str(out))
    assert code == 0, err
    svg = out.read_text()
    plan, _ = load_plan(plan_file)
    for v in plan.vnets:
        assert v.name in svg and all(str(n) in svg for n in v.address_space)
    for s in plan.local_sites:
        assert s.name in svg


def test_png(run_cli, tmp_path):
    code, _, _ = run_cli("graph", "-o", str(tmp_path / "g.png"))
    assert code == 0 and (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_format(run_cli, tmp_path):
    code, _, err = run_cli("graph", "-o", str(tmp_path / "g.pdf"))
    assert code == 2 and "give a .svg or .png file" in err
