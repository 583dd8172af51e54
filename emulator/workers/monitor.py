"""Record each gateway's own connection events (vici ike-updown / child-updown) for a lab, and
supervise the gateways: a daemon that dies is started again, as Azure's gateways recover by themselves.

argv: LAB_DIR, then NAME=GATEWAY_DIR per gateway. Appends one JSON line per connectivity-state
transition to LAB_DIR/events.jsonl, in the vocabulary of Get-AzureVNetConnection (event 23401),
and one per connection when its gateway's daemon was restarted (event 23402). Prints "ready" once
every listener is registered. `down` stops this process before it stops the daemons; it also
exits by itself when the lab's state directory is gone.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import vici

EVENT_STATE_CHANGE = 23401
EVENT_RESTART = 23402
RESTARTS_PER_MINUTE = 5  # a daemon that dies at once after every start is left down, and said so
_lock = threading.Lock()


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Recorder:
    def __init__(self, path: Path):
        self.path = path
        self.state: dict[tuple[str, str], str] = {}

    def _write(self, event: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), **event})
                     + "\n")

    def transition(self, gateway: str, conn: str, new: str, cause: str) -> None:
        with _lock:
            old = self.state.get((gateway, conn), "NotConnected")
            if old == new:
                return
            self.state[(gateway, conn)] = new
            self._write({"gateway": gateway, "local_site": conn, "id": EVENT_STATE_CHANGE, "from": old, "to": new,
                         "cause": cause, "message": f"The connectivity state for the local network site '{conn}' "
                                                   f"changed from {_words(old)} to {_words(new)}."})

    def restarted(self, gateway: str, conns: list[str], message: str) -> None:
        with _lock:
            for conn in conns:
                self.state[(gateway, conn)] = "NotConnected"
                self._write({"gateway": gateway, "local_site": conn, "id": EVENT_RESTART, "to": "NotConnected",
                             "cause": "restart", "message": message})


def _words(state: str) -> str:
    return {"NotConnected": "Not Connected"}.get(state, state)


def listen(gateway: str, directory: Path, recorder: Recorder, ready: threading.Barrier) -> None:
    """Record this gateway's events; when its daemon goes while the lab lives, restart it and go on."""
    first, restarts = True, []
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(directory / "charon.vici"))
            for kind, msg in vici.Session(sock).listen(["ike-updown", "child-updown"], timeout=0.05):
                if first:
                    first = False
                    ready.wait()
                if kind is None:
                    continue
                _record(gateway, _text(kind), msg, recorder)
        except (OSError, vici.exception.SessionException, vici.exception.DeserializationException):
            pass  # the daemon went away
        finally:
            if first:
                first = False
                ready.wait()
            sock.close()
        restarts = [t for t in restarts if time.monotonic() - t < 60] + [time.monotonic()]
        if not directory.parent.exists() or len(restarts) > RESTARTS_PER_MINUTE:
            return  # the lab is being removed, or the daemon cannot stay up: `status` says it is not running
        _restart(gateway, directory, recorder)


def _record(gateway: str, kind: str, msg: dict, recorder: Recorder) -> None:
    up = _text(msg.get("up", "no")) == "yes"
    for name, sa in msg.items():
        if name == "up" or not isinstance(sa, dict):
            continue
        conn = _text(name)
        if kind == "child-updown":
            recorder.transition(gateway, conn, "Connected" if up else "NotConnected", kind)
        else:
            recorder.transition(gateway, conn, "Connecting" if up else "NotConnected", kind)


def _restart(gateway: str, directory: Path, recorder: Recorder) -> None:
    from emulator.lab import open_lab, restart_gateway
    from emulator.problems import VnetlabError

    try:
        lab = open_lab(directory.parent.name)
        gw = lab.topology.gateway(gateway)
        seconds = restart_gateway(lab, gw)
        message = (f"The gateway daemon of {gateway} stopped and was restarted by its supervisor; its tunnels "
                   f"were initiated again {seconds:.1f} s later.")
    except (VnetlabError, OSError, StopIteration) as exc:
        message = f"The gateway daemon of {gateway} stopped; restarting it failed: {exc}"
        gw = None
    conns = [t.conn_id for t in gw.tunnels] if gw is not None else sorted(
        {c for g, c in recorder.state if g == gateway})
    recorder.restarted(gateway, conns, message)


def main() -> None:
    lab_dir = Path(sys.argv[1])
    gateways = [arg.split("=", 1) for arg in sys.argv[2:]]
    recorder = Recorder(lab_dir / "events.jsonl")
    ready = threading.Barrier(len(gateways) + 1)
    threads = [threading.Thread(target=listen, args=(name, Path(d), recorder, ready), daemon=True)
               for name, d in gateways]
    for t in threads:
        t.start()
    ready.wait()
    print("ready", flush=True)
    sys.stdout.close()
    for t in threads:
        t.join()


if __name__ == "__main__":
    main()
