"""What pip installs is what runs: every package folder is in the wheel, and the venv's vnetlab
is an installed package, not the checkout (an editable install hides a missing module)."""

import subprocess
import sys
import tomllib
from pathlib import Path

from tests.conftest import ROOT


def test_every_package_folder_is_listed():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = {v: k for k, v in cfg.get("package-dir", {}).items()}
    found = set()
    for init in ROOT.glob("*/**/__init__.py"):
        rel = init.parent.relative_to(ROOT)
        if rel.parts[0] in ("tests", "build") or rel.parts[0].startswith("."):
            continue
        top = mapped.get(rel.parts[0], rel.parts[0])
        found.add(".".join((top, *rel.parts[1:])))
    assert found <= set(cfg["packages"]), f"not in pyproject's packages: {sorted(found - set(cfg['packages']))}"


def test_the_venv_runs_the_installed_package_not_the_checkout(tmp_path):
    vnetlab = Path(sys.executable).parent / "vnetlab"
    assert vnetlab.exists(), "make venv installs vnetlab into the venv"
    code = "import emulator, emulator.workers.monitor, emulator.workers.prober; print(emulator.__file__)"
    where = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                           env={"PATH": "/usr/bin:/bin"})
    assert where.returncode == 0, where.stderr
    imported = Path(where.stdout.strip())
    assert "site-packages" in imported.parts and imported.parent != ROOT / "emulator", \
        f"emulator imported from the checkout, not the installed package: {imported}"
    shipped = subprocess.run([str(vnetlab), "validate"], cwd=tmp_path, capture_output=True, text=True)
    assert shipped.returncode == 0, shipped.stderr  # the default plan is packaged data


def as_the_command(code: str) -> subprocess.CompletedProcess:
    """Run `code` as the vnetlab command: it defines command(netlink=None), which stands in for
    cli.main and runs under entry.run's Ctrl-C policy."""
    code = ("import atexit, os, signal, threading, time, weakref, emulator.cli, emulator.entry\n"
            "from emulator import interrupts\n" + code +
            "emulator.cli.main = command\nraise SystemExit(emulator.entry.run())\n")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30)


def test_a_ctrl_c_after_the_command_returned_leaves_its_answer(tmp_path):
    """A SIGINT that lands while Python shuts down must not turn a finished command into a death by
    signal (CI saw `up` complete the lab and then die with -SIGINT)."""
    done = as_the_command("command = lambda netlink=None: 7\n"
                          "atexit.register(lambda: (os.kill(os.getpid(), signal.SIGINT), time.sleep(0.1)))\n")
    assert (done.returncode, done.stderr) == (7, "")


def test_a_ctrl_c_python_swallows_is_remembered_not_printed(tmp_path):
    """A SIGINT whose KeyboardInterrupt lands inside a callback (CI: an import lock's weakref callback,
    during a lazy import before `up` had begun) is dropped by Python with "Exception ignored in ...".
    The command must neither print that nor forget the interrupt: `up` checks it before it builds."""
    done = as_the_command(
            "class Thing: pass\n"
            "def command(netlink=None):\n"
            "    thing = Thing()\n"
            "    ref = weakref.ref(thing, lambda r: os.kill(os.getpid(), signal.SIGINT))\n"
            "    del thing  # the callback runs, the handler raises in it, Python drops the exception\n"
            "    return 130 if interrupts.interrupted() else 0\n")
    assert (done.returncode, done.stderr) == (130, "")


def test_a_ctrl_c_while_a_lab_changes_stops_it_between_steps_not_inside_one():
    """CI: a Ctrl-C raised inside threading's Condition.wait (the executor's thread pool) broke its
    lock, and `up` ended in "RuntimeError: release unlocked lock" with a traceback. In a deferred
    span, SIGINT and SIGTERM are only noted: the code between two safe points runs to its end, the
    next check raises; a span begun after the interrupt (a cleanup) is not cut short by it."""
    done = as_the_command(
            "from concurrent.futures import ThreadPoolExecutor\n"
            "def command(netlink=None):\n"
            "    try:\n"
            "        build()\n"
            "    except KeyboardInterrupt:\n"
            "        return 130 if reached == ['pool', 'cleanup'] else 1\n"
            "    return 0\n"
            "reached = []\n"
            "def build():\n"
            "    with interrupts.deferred() as check:\n"
            "        check()\n"
            "        with ThreadPoolExecutor(4) as pool:\n"
            "            futures = [pool.submit(os.kill, os.getpid(), sig) for sig in (signal.SIGINT, signal.SIGTERM)]\n"
            "            for f in futures:\n"
            "                f.result()\n"
            "            threading.Event().wait(0.2)  # both signals are handled in here, by the main thread\n"
            "        reached.append('pool')\n"
            "        with interrupts.deferred() as cleanup_check:\n"
            "            cleanup_check()  # the interrupt came before the cleanup began\n"
            "        reached.append('cleanup')\n"
            "        check()\n")
    assert done.returncode == 130 and "Traceback" not in done.stderr, done.stderr


def test_a_ctrl_c_after_the_last_safe_point_is_raised_when_the_span_ends():
    """An interrupt that arrived during a span's last step, with no check after it (verify lifting
    a cap through the executor), must not be lost: the command would go on as if not asked to stop."""
    done = as_the_command(
            "def command(netlink=None):\n"
            "    try:\n"
            "        with interrupts.deferred():\n"
            "            with interrupts.deferred():\n"
            "                os.kill(os.getpid(), signal.SIGINT)\n"
            "            inner_left = True  # an inner span leaves it to the outer one\n"
            "    except KeyboardInterrupt:\n"
            "        return 130 if inner_left else 1\n"
            "    return 0\n")
    assert done.returncode == 130 and "Traceback" not in done.stderr, done.stderr


def test_make_test_kernel_selects_only_kernel_parametrisations():
    """`make test-kernel` selects with -k kernel, and a skip in the guest fails it: a lab test whose
    own name says "kernel" but that is not run per data plane would be selected and skipped there."""
    import ast

    for path in (ROOT / "tests" / "lab").glob("test_*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_") and "kernel" in node.name:
                assert "dataplane" in [a.arg for a in node.args.args], f"{path.name}::{node.name}"


def test_version_names_vnetlab_and_the_strongswan_its_gateways_run(tmp_path):
    """For a bug report: the installed vnetlab's version (pyproject's), and the daemon's own answer."""
    vnetlab = Path(sys.executable).parent / "vnetlab"
    res = subprocess.run([str(vnetlab), "--version"], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert res.returncode == 0 and res.stdout.startswith(f"vnetlab {version}, strongSwan "), res.stdout + res.stderr
    assert res.stdout.split(", ")[1] != "strongSwan not installed" or not Path("/usr/lib/ipsec/charon").exists()
