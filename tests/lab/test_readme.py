"""Run every command of the README's '```sh test' blocks, in order, as a user would (root)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.readme_tools import README, runnable_blocks

ROOT = README.parent


def test_readme_commands(lab):
    env = {**lab.env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    out = ROOT / "out"
    existed = out.exists()
    try:
        for block in runnable_blocks(README.read_text()):
            for line in block:
                command, _, note = line.partition("   # ")
                expected = int(note.split("exit ")[1]) if "exit " in note else 0
                res = subprocess.run(command, shell=True, cwd=ROOT, env=env, capture_output=True, text=True,
                                     timeout=180)
                assert res.returncode == expected, f"{command}\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
        assert (out / "junit.xml").exists() and list((out / "pcap").glob("*.pcap"))
    finally:
        if not existed:
            shutil.rmtree(out, ignore_errors=True)
