"""A write-ahead journal of everything a lab creates, and the teardown that removes exactly that.

Each resource is journalled (written with one write(2), not buffered) *before* it is created, so a
run killed at any point leaves a journal that covers everything it may have made: what write(2)
returned from is in the kernel's page cache and outlives the process. It is not fsynced: only a
crash of the machine loses it, and that also ends every namespace and process it names (fsync
cost 1-2 ms a record where the state directory is on disk; a 300-VNet `up` journals 900). Teardown:
1. stops the processes the journal names, by pid, after checking the pid still is the process
   that was started (its start time);
2. stops any process still living inside one of the journalled namespaces (found by the
   namespace's inode, not by name: e.g. a daemon whose pid was not journalled yet);
3. deletes the namespaces (their links and addresses go with them);
4. deletes the lab's own directory.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from . import nsfs

JOURNAL = "resources.jsonl"
MARKER = ".vnetlab-lab"  # written the moment a lab's directory is made: only such a directory is ever removed


def read_jsonl(path: Path) -> list[dict]:
    """The records of an append-only JSON-lines file; a last line cut short (by a kill, or being
    written right now) is skipped, and the records before it still count."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    result = []
    for line in lines:
        try:
            result.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return result


def start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: when the process started, to recognise a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _netns_inode(name: str) -> int | None:
    try:
        return (nsfs.NETNS_DIR / name).stat().st_ino
    except OSError:
        return None


def pids_in_netns(name: str) -> list[int]:
    inode = _netns_inode(name)
    if inode is None:
        return []
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "ns" / "net").stat().st_ino == inode:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@dataclass
class Registry:
    directory: Path

    @staticmethod
    def create(directory: Path) -> "Registry":
        """A new lab directory (mode 0700; it must not exist), marked as vnetlab's at once."""
        directory.mkdir(mode=0o700)
        (directory / MARKER).touch(mode=0o600)
        return Registry(directory)

    @staticmethod
    def owns(directory: Path) -> bool:
        """Whether vnetlab made this directory (its marker, or a journal of earlier versions)."""
        return (directory / MARKER).exists() or (directory / JOURNAL).exists()

    @property
    def journal(self) -> Path:
        return self.directory / JOURNAL

    def record(self, kind: str, **fields: object) -> None:
        line = json.dumps({"kind": kind, **fields}) + "\n"
        fd = os.open(self.journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def entries(self) -> list[dict]:
        return read_jsonl(self.journal)

    def create_netns(self, name: str) -> None:
        self.record("netns", name=name)
        nsfs.create(name)

    def adopt_process(self, pid: int, what: str) -> None:
        self.record("process", pid=pid, start=start_ticks(pid), what=what)

    def live(self, what: str) -> set[int]:
        """The journalled processes of this kind that still run."""
        return {e["pid"] for e in self.entries() if _running(e) and e["what"] == what}

    def stop(self, what: str, grace: float = 1.0) -> None:
        _stop(self.live(what), grace)

    def teardown(self, grace: float = 1.0) -> list[str]:
        """Remove everything journalled; returns what could not be removed (empty when clean). A
        directory vnetlab did not make is left alone, whatever it holds."""
        if not Registry.owns(self.directory):
            return [f"{self.directory} is not a vnetlab lab directory (no {MARKER}): left alone"]
        entries = self.entries()
        namespaces = [e["name"] for e in entries if e["kind"] == "netns"]
        victims = {e["pid"] for e in entries if _running(e)}
        for ns in namespaces:
            victims.update(pids_in_netns(ns))
        victims.discard(os.getpid())  # never this command itself, whatever namespace it stands in
        _stop(victims, grace)
        problems = []
        for ns in reversed(namespaces):
            try:
                nsfs.remove(ns)
            except OSError as exc:
                problems.append(f"namespace {ns}: {exc}")
        shutil.rmtree(self.directory, ignore_errors=True)
        if self.directory.exists():
            problems.append(f"directory {self.directory} could not be removed")
        return problems


def _running(e: dict) -> bool:
    """A journalled process that still runs: checked by start time (a reused pid is not it), and a
    zombie is not one either (a killed daemon nobody has reaped yet)."""
    return (e["kind"] == "process" and e.get("start") is not None and start_ticks(e["pid"]) == e["start"]
            and _alive(e["pid"]))


def _stop(pids: set[int], grace: float) -> None:
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        alive = {p for p in alive if _alive(p)}
        if alive:
            time.sleep(0.01)
    for pid in alive:
        _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.005)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie; reaps it if it is our own child."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        threads = len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return False
    # a multi-threaded daemon's leader turns zombie while its other threads still clean up
    return state != "Z" or threads > 1
