"""How vnetlab's processes load their modules: the garbage collector's part (emulator.importing)
and the one way helpers start (python -m emulator.workers NAME)."""

import gc
import subprocess

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
    assert "usage: python -m emulator.workers {capture,keylog,monitor,prober}" in done.stderr
