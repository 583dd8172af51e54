"""Run every command of the README's '```sh test' blocks, in order, as a newcomer would (root):
right after `make lab` (its lab still running), and again after `make down`."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.readme_tools import README, runnable_blocks

ROOT = README.parent


def _run_blocks(env: dict) -> None:
    for block in runnable_blocks(README.read_text()):
        for line in block:
            command, _, note = line.partition("   # ")
            expected = int(note.split("exit ")[1]) if "exit " in note else 0
            res = subprocess.run(command, shell=True, cwd=ROOT, env=env, capture_output=True, text=True,
                                 timeout=180)
            assert res.returncode == expected, f"{command}\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"


def _make(target: str, env: dict) -> subprocess.CompletedProcess:
    res = subprocess.run(["make", "-s", target], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"make {target}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def test_readme_after_make_lab_then_after_make_down(lab):
    env = {**lab.env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    out = ROOT / "out"
    existed = out.exists()
    try:
        made = _make("lab", env)
        assert "checks passed" in made.stdout and "try:" in made.stdout
        assert "vnetlab exec TestVNet1/default -- ping -c 1 10.41.0.4" in made.stdout  # this plan's own nodes
        again = _make("lab", env)  # a second run reuses the lab
        assert "reusing it" in again.stderr
        _run_blocks(env)
        assert (out / "junit.xml").exists() and (out / "pcap" / "TestVNet1.pcap").exists()
        assert os.listdir(lab.state) == ["classic-vnet-to-vnet"] or set(os.listdir(lab.state)) == {
            "classic-vnet-to-vnet", ".current"}  # the README's labs are gone, make lab's is left
        _make("down", env)
        assert not lab.state.exists() or not [p for p in os.listdir(lab.state) if not p.startswith(".")]
        _run_blocks(env)
    finally:
        if not existed:
            shutil.rmtree(out, ignore_errors=True)
