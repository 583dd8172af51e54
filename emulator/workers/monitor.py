"""Record each gateway's own connection events (vici ike-updown / child-updown) for a lab.

argv: LAB_DIR, then NAME=GATEWAY_DIR per gateway. Appends one JSON line per connectivity-state
transition to LAB_DIR/events.jsonl, in the vocabulary of Get-AzureVNetConnection (event 23401).
Prints "ready" once every listener is registered; exits by itself when all gateways are gone.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path

import vici

EVENT_STATE_CHANGE = 23401
_lock = threading.Lock()


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Recorder:
    def __init__(self, path: Path):
        self.path = path
        self.state: dict[tuple[str, str], str] = {}

    def transition(self, gateway: str, conn: str, new: str, cause: str) -> None:
        with _lock:
            old = self.state.get((gateway, conn), "NotConnected")
            if old == new:
                return
            self.state[(gateway, conn)] = new
            event = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "gateway": gateway,
                     "local_site": conn, "id": EVENT_STATE_CHANGE, "from": old, "to": new, "cause": cause,
                     "message": f"The connectivity state for the local network site '{conn}' changed from "
                                f"{_words(old)} to {_words(new)}."}
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(event) + "\n")


def _words(state: str) -> str:
    return {"NotConnected": "Not Connected"}.get(state, state)


def listen(gateway: str, directory: Path, recorder: Recorder, ready: threading.Barrier) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    first = True
    try:
        sock.connect(str(directory / "charon.vici"))
        for kind, msg in vici.Session(sock).listen(["ike-updown", "child-updown"], timeout=0.05):
            if first:
                first = False
                ready.wait()
            if kind is None:
                continue
            kind = _text(kind)
            up = _text(msg.get("up", "no")) == "yes"
            for name, sa in msg.items():
                if name == "up" or not isinstance(sa, dict):
                    continue
                conn = _text(name)
                if kind == "child-updown":
                    recorder.transition(gateway, conn, "Connected" if up else "NotConnected", kind)
                elif up:
                    recorder.transition(gateway, conn, "Connecting", kind)
                else:
                    recorder.transition(gateway, conn, "NotConnected", kind)
    except (OSError, vici.exception.SessionException, vici.exception.DeserializationException):
        pass  # the daemon went away: the lab is being removed
    finally:
        if first:
            ready.wait()
        sock.close()


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
