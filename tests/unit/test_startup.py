"""How vnetlab's processes load their modules: the garbage collector's part (emulator.importing)
and the one way helpers start (python -m emulator.workers NAME), and what the command itself
never loads."""

import gc
import subprocess
import sys

import pytest

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
    """`up` loads pyroute2 (0.05 s) in its netlink worker only, `down` not at all (emulator/netlink.py):
    a module of theirs that imported it would put that back on the command's own path.
    tests/lab/test_netlink.py checks the commands themselves as they run."""
    code = ("import sys, emulator.entry, emulator.netlink, emulator.cli, emulator.commands, emulator.capture\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pyroute2'))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd="/")
    assert (done.returncode, done.stdout, done.stderr) == (0, "[]\n", "")


def test_the_modules_of_up_do_not_load_what_only_capture_and_trace_need():
    """`up` starts the IKE recorder (tcpdump.py) and names the key pipes (keyfiles.py): capture's
    key tables and the key log's parser (8 ms) are for `capture`, `trace` and the key recorder."""
    code = ("import sys, emulator.entry, emulator.netlink, emulator.cli, emulator.commands\n"
            "print(sorted(m for m in ('emulator.capture', 'emulator.keylog', 'emulator.keytables', 'scapy') "
            "if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd="/")
    assert (done.returncode, done.stdout, done.stderr) == (0, "[]\n", "")


def _subcommands(parser) -> dict:
    return next(a for a in parser._actions if a.dest == "command").choices  # noqa: SLF001 - argparse's own


def _arguments(parser) -> list[tuple]:
    return [(a.dest, a.option_strings, a.default, a.required, a.choices, a.nargs,
             getattr(a.type, "__qualname__", a.type)) for a in parser._actions]


def test_a_command_line_builds_only_its_commands_parser_and_it_is_the_same_one():
    """Every command's start builds only its own parser (all 25 cost 10 ms); that parser must be
    the one the full build makes: the same arguments, defaults and help, for every command."""
    from emulator.cli import HANDLERS, build_parser

    full = _subcommands(build_parser())
    assert set(full) == set(HANDLERS)
    for name in HANDLERS:
        alone = _subcommands(build_parser(name))
        assert list(alone) == [name]
        assert alone[name].format_help() == full[name].format_help()
        assert _arguments(alone[name]) == _arguments(full[name])


def test_a_command_line_that_names_no_command_is_told_every_command(capsys):
    from emulator.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["nonesuch"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'nonesuch'" in err and "'up'" in err and "'trace'" in err


def test_the_netlink_operations_load_pyroute2s_messages_not_all_of_pyroute2():
    """netns.ops needs pyroute2's message modules only: not its IPRoute (asyncio), nor the rest its
    package __init__ imports (0.05 s more, in `up`'s netlink worker and the event monitor). A
    process that loaded all of pyroute2 before is served by that."""
    heavy = ("asyncio", "pyroute2.iproute", "pyroute2.ndb", "pyroute2.ipdb")
    code = f"import sys, netns.ops\nprint(sorted(m for m in {heavy!r} if m in sys.modules))\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd="/")
    assert (done.returncode, done.stdout, done.stderr) == (0, "[]\n", "")
    code = "import pyroute2, netns.ops\nassert netns.ops.NetlinkError is pyroute2.NetlinkError\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd="/")
    assert (done.returncode, done.stderr) == (0, "")
