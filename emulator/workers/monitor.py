"""Record each gateway's own events for a lab, and supervise the gateways and their links, as
Azure's gateways recover by themselves.

argv: LAB_DIR, then NAME=NETNS=GATEWAY_DIR per gateway. Appends one JSON line per event to
LAB_DIR/events.jsonl, in the vocabulary of Get-AzureVNetConnection:
- 23401: a connectivity-state transition (vici ike-updown / child-updown);
- 23402: the gateway's daemon stopped, or stopped answering, and its supervisor restarted it;
- 23403: an SA was rekeyed (vici ike-rekey / child-rekey);
- 23404: the gateway's backbone link went down or came back (its routes are put back then).
Every change to the lab goes through lab.py's reconciler, under the lab's lock. Prints "ready"
once every listener is registered, after `up` has said "go" on its stdin (the daemons run then).
`down` stops this process before it stops the daemons; it also exits by itself when the lab's
state directory is gone.
"""

from __future__ import annotations

import faulthandler
import json
import os
import select
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from emulator import gateways, importing  # vici only: the heavier modules (pyroute2) load after "ready"
from emulator.events import record_event
from netns import nsfs
from netns.spawn import normal_priority, open_files_to_hard_limit, signals_unblocked

EVENT_STATE_CHANGE = 23401
EVENT_RESTART = 23402
EVENT_REKEY = 23403
EVENT_LINK = 23404
RESTARTS_PER_MINUTE = 5  # a daemon that dies at once after every start is left down, and said so
FALSE_ALARM_PAUSE_S = (0.05, 1.0)  # first and longest pause after a daemon that still ran when healed
# A wedged daemon never answers again, so there is no hurry to call it wedged (and each question
# gives it gateways.SILENT_AFTER_S to answer).
HEALTH_EVERY_S = 10.0  # each daemon is asked for its version this often (watch_health)
WEDGED_AFTER_S = 60.0  # a daemon that runs but has answered nothing for this long is restarted
RTMGRP_LINK = 1
_lock = threading.Lock()
# Set once the main thread has loaded the heavy modules, after "ready". A listener thread needs
# them only to heal; it waits for this first, so that no two threads import at once (concurrent
# imports of one package from several threads can fail half-way, and a listener that died of it
# left its gateway unsupervised and its events unrecorded).
_loaded = threading.Event()


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Recorder:
    def __init__(self, lab_dir: Path):
        self.lab_dir = lab_dir
        self.state: dict[tuple[str, str], str] = {}

    def write(self, gateway: str, conn: str, event_id: int, message: str, **fields) -> None:
        record_event(self.lab_dir, {"gateway": gateway, "local_site": conn, "id": event_id, **fields,
                                    "message": message})

    def transition(self, gateway: str, conn: str, new: str, cause: str, quiet: bool = False, **fields) -> None:
        """quiet: only take note (a restart's own event has said it already)."""
        with _lock:
            old = self.state.get((gateway, conn), "NotConnected")
            if old == new:
                return
            self.state[(gateway, conn)] = new
            if quiet:
                return
            self.write(gateway, conn, EVENT_STATE_CHANGE, f"The connectivity state for the local network site "
                       f"'{conn}' changed from {_words(old)} to {_words(new)}.", to=new, cause=cause, **fields)

    def forget(self, gateway: str) -> None:
        """The daemon is gone: whatever its SAs were, they are no more."""
        with _lock:
            for key in [k for k in self.state if k[0] == gateway]:
                self.state[key] = "NotConnected"


def _words(state: str) -> str:
    return {"NotConnected": "Not Connected"}.get(state, state)


def listen(gateway: str, directory: Path, recorder: Recorder, ready: threading.Barrier) -> None:
    """Record this gateway's events; when its daemon goes while the lab lives, restart it and go on."""
    announced, restarts, pause, listened = False, [], FALSE_ALARM_PAUSE_S[0], False
    while True:
        synced = False
        try:
            with gateways.session(directory, timeout=5.0) as s:
                events = gateways.events(s, ["ike-updown", "child-updown", "ike-rekey", "child-rekey"], then_s=1.0)
                for kind, msg in events:
                    if not announced:
                        announced = True
                        ready.wait()
                    if not synced:  # registered now: catch up with what came up before
                        synced, pause = True, FALSE_ALARM_PAUSE_S[0]
                        _sync(gateway, directory, recorder, quiet=listened)
                        listened = True
                    if kind is not None:
                        _record(gateway, _text(kind), msg, recorder)
        except (ConnectionError, OSError, ValueError):
            pass  # the daemon went away
        finally:
            if not announced:
                announced = True
                ready.wait()
        restarts = [t for t in restarts if time.monotonic() - t < 60]
        if not directory.parent.exists() or len(restarts) >= RESTARTS_PER_MINUTE:
            recorder.forget(gateway)
            return  # the lab is being removed, or the daemon cannot stay up: `status` says it is not running
        if _restart(gateway, directory, recorder):
            restarts.append(time.monotonic())
        else:  # a false alarm is not a restart: listen again soon (a killed daemon whose threads are
            # still exiting is healed a moment later), backing off for one that is only slow
            time.sleep(pause)
            pause = min(pause * 2, FALSE_ALARM_PAUSE_S[1])


def _sync(gateway: str, directory: Path, recorder: Recorder, quiet: bool) -> None:
    """A listener catches up with SAs that came up before it listened. Listening again (its daemon
    was restarted by the supervisor or by reset-gateway, or was only slow) it does so quietly: the
    restart's own event (23402 or 23405) says how the tunnels came back, and must stay the last word
    (CI saw reset-gateway's event followed by a "Not Connected to Connected" of the listener)."""
    try:
        for conn, sa in gateways.list_sas(directory).items():
            if sa.child_installed:
                recorder.transition(gateway, conn, "Connected", "listener started", quiet=quiet)
    except (ConnectionError, OSError):
        pass


def _record(gateway: str, kind: str, msg: dict, recorder: Recorder) -> None:
    up = _text(msg.get("up", "no")) == "yes"
    for name, sa in msg.items():
        if name == "up" or not isinstance(sa, dict):
            continue
        conn = _text(name)
        if kind == "child-updown":
            recorder.transition(gateway, conn, "Connected" if up else "NotConnected", kind)
        elif kind == "ike-updown":
            recorder.transition(gateway, conn, "Connecting" if up else "NotConnected", kind)
        elif kind == "child-rekey":
            for child in sa.get("child-sas", {}).values():
                old, new = child.get("old", {}), child.get("new", {})
                recorder.write(gateway, conn, EVENT_REKEY, f"The IPsec SA of the local network site '{conn}' was "
                               f"rekeyed: SPIs {_text(old.get('spi-in', '?'))} -> {_text(new.get('spi-in', '?'))} "
                               "(the new SA was installed before the old one was deleted).",
                               cause=kind)
        elif kind == "ike-rekey":
            new = sa.get("new", {})
            recorder.write(gateway, conn, EVENT_REKEY, f"The IKE SA of the local network site '{conn}' was rekeyed "
                           f"(new IKE SA #{_text(new.get('uniqueid', '?'))}).", cause=kind)


def _restart(gateway: str, directory: Path, recorder: Recorder, silent_for: float | None = None) -> bool:
    """False when the daemon's process still runs: it was slow to answer, or reset-gateway restarted
    it (and records its own event). silent_for: it runs, but has answered nothing for that long
    (watch_health): it is stopped and started again."""
    _loaded.wait()
    from emulator.lab import heal_gateway

    try:
        seconds = heal_gateway(directory.parent.name, gateway, wedged=silent_for is not None)
    except Exception as exc:  # noqa: BLE001 - the supervisor reports any failure as an event, and goes on
        seconds, failure = None, str(exc)
    else:
        failure = None
        if seconds is None:
            return False
    recorder.forget(gateway)
    what = (f"The gateway daemon of {gateway} stopped" if silent_for is None else
            f"The gateway daemon of {gateway} was running but had answered nothing for {silent_for:.0f} s")
    message = (f"{what}; its supervisor started it again, and its tunnels were initiated again {seconds:.1f} s "
               "later." if failure is None else f"{what}; restarting it failed: {failure}")
    try:
        installed = {c for c, sa in gateways.list_sas(directory).items() if sa.child_installed}
    except (ConnectionError, OSError):
        installed = set()
    for conn in _conns(directory.parent.name, gateway):
        recorder.write(gateway, conn, EVENT_RESTART, message, cause="restart",
                       to="Connected" if conn in installed else "NotConnected")
    return True


def _conns(lab_name: str, gateway: str) -> list[str]:
    _loaded.wait()
    from emulator.lab import open_lab
    from emulator.problems import VnetlabError

    try:
        return [t.conn_id for t in open_lab(lab_name).topology.gateway(gateway).tunnels]
    except (VnetlabError, OSError, StopIteration):
        return [""]


def watch_health(lab_dir: Path, gateway_dirs: dict[str, Path], recorder: Recorder) -> None:
    """A daemon can live on and never answer again: strongSwan before 5.9.11 has a deadlock in its
    vici plugin (#566). Its listener would wait on it for ever, and status say "does not answer"
    for ever. Each daemon is asked for its version every HEALTH_EVERY_S; one whose socket takes
    connections but that has answered nothing for WEDGED_AFTER_S is stopped and started again. A
    daemon that is gone is its listener's to heal."""
    silent_since: dict[str, float] = {}
    while lab_dir.exists():
        time.sleep(HEALTH_EVERY_S)
        for gateway, directory in gateway_dirs.items():
            if not gateways.is_silent(directory):  # it answered, or it is gone
                silent_since.pop(gateway, None)
                continue
            since = silent_since.setdefault(gateway, time.monotonic())
            if time.monotonic() - since >= WEDGED_AFTER_S and lab_dir.exists():
                _restart(gateway, directory, recorder, silent_for=time.monotonic() - since)
                del silent_since[gateway]


def watch_links(lab_dir: Path, gateways_ns: dict[str, str]) -> None:
    """Link events of each gateway's namespace (netlink, RTMGRP_LINK). When a backbone link goes
    down, the kernel drops the routes through it; when it comes back, they are put back. Started
    after "ready", once the main thread has loaded pyroute2 and the healing modules (0.1 s): `up`
    need not wait for that."""
    _loaded.wait()
    socks: dict[int, tuple[socket.socket, str, str]] = {}
    for gateway, ns in gateways_ns.items():
        sock = nsfs.inside(ns, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE))
        sock.bind((0, RTMGRP_LINK))
        socks[sock.fileno()] = (sock, gateway, ns)
    down: set[str] = set()
    for gateway, ns in gateways_ns.items():  # listed, then watched: a link that went down meanwhile counts
        _link_changed(lab_dir, gateway, ns, down)
    _write_links_down(lab_dir, down)  # the first look is done: readers of the links' state need not wait (lab.py)
    poller = select.poll()
    for fd in socks:
        poller.register(fd, select.POLLIN)
    while lab_dir.exists():
        changed = set()
        for fd, _ev in poller.poll(500):
            sock, gateway, ns = socks[fd]
            try:
                sock.recv(65536)
            except OSError:
                continue
            changed.add((gateway, ns))
        if not changed:
            continue
        time.sleep(0.2)  # let a burst of link messages settle
        for gateway, ns in sorted(changed):
            _link_changed(lab_dir, gateway, ns, down)


def _link_changed(lab_dir: Path, gateway: str, ns: str, down: set[str]) -> None:
    _loaded.wait()
    from emulator.lab import heal_routes
    from emulator.reconcile import AddRoute, Initiate
    from netns import ops

    try:
        with ops.Namespace(ns) as n:
            is_up = n.link_up("bb")
    except Exception:  # noqa: BLE001 - the namespace is going away with the lab
        return
    if is_up == (gateway not in down):
        return
    if is_up:
        down.discard(gateway)
        try:
            done = heal_routes(lab_dir.name, ns)
            routes = sum(isinstance(a, AddRoute) for a in done)
            tunnels = sum(isinstance(a, Initiate) for a in done)
            what = f"{routes} route(s) through it put back, {tunnels} tunnel(s) initiated again"
        except Exception as exc:  # noqa: BLE001 - said in the event; the next link change tries again
            what = f"its routes could not be put back: {exc}"
        message = f"The backbone link of {gateway} came back up; {what}."
    else:
        down.add(gateway)
        message = f"The backbone link of {gateway} went down; the kernel dropped the routes through it."
    _write_links_down(lab_dir, down)
    record_event(lab_dir, {"gateway": gateway, "local_site": "", "id": EVENT_LINK, "cause": "link",
                           "to": "up" if is_up else "down", "message": message})


def _write_links_down(lab_dir: Path, down: set[str]) -> None:
    _loaded.wait()
    from emulator.lab import LINKS_DOWN

    tmp = lab_dir / f".{LINKS_DOWN}.{os.getpid()}"
    tmp.write_text(json.dumps(sorted(down)))
    os.replace(tmp, lab_dir / LINKS_DOWN)


def main(priority: int) -> None:
    """priority: the one to take back when the work begins (started IN_BACKGROUND)."""
    signals_unblocked()
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID`: every thread's stack, into workers.log
    open_files_to_hard_limit()  # a vici session held open per gateway, and more for its checks
    lab_dir = Path(sys.argv[1])
    specs = [arg.split("=", 2) for arg in sys.argv[2:]]
    # `up` starts this worker while it builds the network, and says "go" once the daemons run;
    # an `up` that ended before (interrupted, failed) closed the pipe: there is nothing to watch
    if sys.stdin.buffer.readline() != b"go\n":
        return
    normal_priority(priority)  # the listeners start now, and `up` waits for them (it also raised it)
    sys.stdin.close()
    recorder = Recorder(lab_dir)
    ready = threading.Barrier(len(specs) + 1)
    threads = [threading.Thread(target=listen, args=(name, Path(d), recorder, ready), daemon=True)
               for name, _ns, d in specs]
    for t in threads:
        t.start()
    ready.wait()
    print("ready", flush=True)
    sys.stdout.close()
    # after "ready": their imports (pyroute2 and the healing modules: 0.1 s) would hold the listeners,
    # and `up` with them.
    # Not at the lowest priority: the link watcher and the healing wait for it, and a busy machine
    # starved it for as long as it stayed busy (a link down went unnoticed in the test guest)
    with importing():
        import emulator.lab  # noqa: F401 - loaded here, in one thread (see _loaded)
        import emulator.reconcile  # noqa: F401
        import netns.ops  # noqa: F401

    _loaded.set()
    links = threading.Thread(target=watch_links, args=(lab_dir, {n: ns for n, ns, _d in specs}), daemon=True)
    health = threading.Thread(target=watch_health, args=(lab_dir, {n: Path(d) for n, _ns, d in specs}, recorder),
                              daemon=True)
    links.start()
    health.start()
    for t in [*threads, links, health]:
        t.join()
