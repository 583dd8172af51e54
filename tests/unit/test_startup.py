"""How vnetlab's processes load their modules: the garbage collector's part (emulator.importing)
and the one way helpers start (python -m emulator.workers NAME), and what the command itself
never loads."""

import gc
import subprocess
import sys

from emulator import importing
from emulator.workers import command


def test_modules_load_without_the_collector_and_are_frozen_out_of_its_passes():
    seen = []
    before = gc.get_freeze_count()
    with importing():
        seen.append(gc.isenabled())
        made = [object() for _ in range(5)] + [[]]  # what an import makes
    assert seen == [False]
    assert gc.isenabled()
    assert gc.get_freeze_count() >= before + len(made)
    gc.unfreeze()


def test_a_collector_that_was_off_stays_off():
    gc.disable()
    try:
        with importing():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
        gc.unfreeze()


def test_a_helper_that_does_not_exist_is_named_with_the_ones_that_do():
    done = subprocess.run(command("nonesuch"), capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 1
    assert "usage: python -m emulator.workers {capture,keylog,monitor,netlink,prober}" in done.stderr


def test_the_modules_of_up_and_down_do_not_load_pyroute2():
    """`up` loads pyroute2 (0.1 s) in its netlink worker only, `down` not at all (emulator/netlink.py):
    a module of theirs that imported it would put that back on the command's own path.
    tests/lab/test_netlink.py checks the commands themselves as they run."""
    code = ("import sys, emulator.entry, emulator.netlink, emulator.cli, emulator.commands, emulator.capture\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pyroute2'))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd="/")
    assert (done.returncode, done.stdout, done.stderr) == (0, "[]\n", "")
