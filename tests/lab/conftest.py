"""Lab tests: real namespaces, real charon daemons, real packets. Root only.

Every test runs with its own state directory and checks after `down` that nothing it created
is left: namespaces, processes, state directory."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from emulator.gateways import CHARON

pytestmark = pytest.mark.lab


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/lab/" in str(item.fspath):
            item.add_marker(pytest.mark.lab)
            if os.geteuid() != 0:
                item.add_marker(pytest.mark.skip(reason="lab tests need root (network namespaces, charon)"))
            elif not CHARON.exists():
                item.add_marker(pytest.mark.skip(reason=f"strongSwan missing ({CHARON}): run scripts/install.sh"))


@pytest.fixture(scope="session")
def supported():
    from emulator.lab import supported_dataplanes

    return supported_dataplanes()


@pytest.fixture(scope="session")
def netem():
    """Whether this kernel can delay packets (sch_netem): asked for where it cannot, delay is refused."""
    from emulator.impair import netem_available

    return netem_available()


@pytest.fixture(params=["libipsec", "kernel"])
def dataplane(request, supported):
    """Run a test on every IPsec data plane this machine has; skip the others, saying why."""
    if request.param not in supported:
        why = {"kernel": "this kernel has no ESP (XFRM states cannot carry traffic): the kernel data plane "
                         "runs in the Vagrant VM, on an ordinary distribution kernel, and in make test-kernel",
               "libipsec": "strongSwan's kernel-libipsec plugin is not installed (libcharon-extra-plugins)"}
        if request.param == "kernel" and os.environ.get("VNETLAB_REQUIRE_KERNEL"):
            pytest.fail(f"the kernel data plane is required here (make test-kernel's guest): {why['kernel']}")
        pytest.skip(why[request.param])
    return request.param


VNETLAB = Path(sys.executable).parent / "vnetlab"  # the console script of the installed package


class LabRunner:
    """Runs the CLI as users do: the installed `vnetlab`, from a directory outside the source tree."""

    def __init__(self, state: Path):
        self.state = state
        self.cwd = state.parent
        self.env = {**os.environ, "VNETLAB_STATE_DIR": str(state)}
        self.env.pop("PYTHONPATH", None)

    def cli(self, *argv: str, timeout: float = 60, input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([str(VNETLAB), *argv], env=self.env, capture_output=True, text=True,
                              timeout=timeout, cwd=self.cwd, input=input)

    def status(self, name: str) -> dict:
        res = self.cli("status", "--name", name, "--json")
        return {(c["gateway"], c["local_site"]): c for c in json.loads(res.stdout)["connections"]}

    def exec_(self, name: str, node: str, *argv: str) -> subprocess.CompletedProcess:
        return self.cli("exec", "--name", name, node, "--", *argv)

    def ping(self, name: str, node: str, dst: str) -> bool:
        return self.exec_(name, node, "ping", "-c", "1", "-W", "2", dst).returncode == 0

    def journal(self, name: str) -> list[dict]:
        path = self.state / name / "resources.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def charon_pid(lab: LabRunner, name: str, gateway: str) -> int:
    """The gateway's current daemon: the last one journalled (the supervisor journals each restart)."""
    return [e["pid"] for e in lab.journal(name) if e["kind"] == "process" and e["what"] == f"charon {gateway}"][-1]


def stop_supervisor(lab: LabRunner, name: str) -> None:
    """Stop a lab's event monitor, which restarts dead gateway daemons: for tests of a daemon that stays dead."""
    import signal
    import time

    (pid,) = [e["pid"] for e in lab.journal(name) if e["kind"] == "process" and e["what"] == "event monitor"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while live(pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def netlink_workers() -> list[int]:
    """The netlink workers (emulator/netlink.py) running on this machine: `up` ends its own."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[1:4] == [b"-m", b"emulator.workers", b"netlink"]:
            found.append(int(pid))
    return found


def live(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return stat[0] != "Z" or len(os.listdir(f"/proc/{pid}/task")) > 1


@pytest.fixture
def lab(tmp_path_factory):
    """A runner; on teardown removes every lab it made and proves nothing is left."""
    state = tmp_path_factory.mktemp("s", numbered=True)
    runner = LabRunner(state)
    seen: dict[str, list[dict]] = {}
    original = runner.cli

    def tracking_cli(*argv, **kw):
        result = original(*argv, **kw)
        for name in os.listdir(state) if state.exists() else []:
            seen[name] = runner.journal(name) or seen.get(name, [])
        return result

    runner.cli = tracking_cli
    yield runner
    original("down", "--all")
    assert_nothing_left(state, seen)


def assert_nothing_left(state: Path, journals: dict[str, list[dict]]) -> None:
    assert not state.exists() or not os.listdir(state), f"state left behind: {os.listdir(state)}"
    for name, entries in journals.items():
        for e in entries:
            if e["kind"] == "netns":
                assert not Path("/run/netns", e["name"]).exists(), f"namespace {e['name']} left behind"
            if e["kind"] == "process":
                assert not live(e["pid"]), f"process {e['pid']} ({e['what']}) left behind"
