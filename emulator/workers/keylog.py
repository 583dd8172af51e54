"""Read each gateway's level-4 log from its FIFO and keep only the session keys, and the final
byte counts of each CHILD_SA that closes (emulator/keylog.py).

argv: NAME=GATEWAY_DIR=FD per gateway. FD is GATEWAY_DIR/keys.pipe, which `up` made (1 MB) and opened
for reading and writing before the daemons start, so a daemon opening it never blocks and never
sees a closed pipe, not even across a restart. Appends one JSON line per SA to GATEWAY_DIR/keys.jsonl
(mode 0600), and one per closed CHILD_SA to GATEWAY_DIR/closed-sas.jsonl. Prints "ready" once it
reads every FIFO. Started before the daemons and stopped by
`down` by its journalled pid; it also exits when the lab's state directory is gone.
"""

from __future__ import annotations

import faulthandler
import json
import os
import selectors
import signal
import sys
from pathlib import Path

from emulator.keyfiles import CLOSED_FILE, KEYS_FILE
from emulator.keylog import ClosedSa, KeyLogParser
from netns.spawn import signals_unblocked


def main() -> None:
    signals_unblocked()
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID`: every thread's stack, into workers.log
    sel = selectors.DefaultSelector()
    gateways = []
    for arg in sys.argv[1:]:
        name, rest = arg.split("=", 1)
        directory, fd_text = rest.rsplit("=", 1)
        gateways.append((name, directory))
        fd = int(fd_text)
        out = {kind: os.open(Path(directory) / path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
               for kind, path in (("keys", KEYS_FILE), ("closed", CLOSED_FILE))}
        sel.register(fd, selectors.EVENT_READ, (KeyLogParser(name), out, bytearray()))
    print("ready", flush=True)
    sys.stdout.close()
    lab_dir = Path(gateways[0][1]).parent if gateways else None
    while lab_dir is not None and lab_dir.exists():
        for key, _ in sel.select(timeout=1.0):
            parser, out, pending = key.data
            try:
                chunk = os.read(key.fd, 65536)
            except BlockingIOError:
                continue
            pending += chunk
            *lines, rest = pending.split(b"\n")
            pending[:] = rest
            records = [r for line in lines for r in parser.feed(line.decode("utf-8", "replace"))]
            for kind in out:
                mine = [r for r in records if (kind == "closed") == isinstance(r, ClosedSa)]
                if mine:
                    os.write(out[kind], "".join(json.dumps(r.to_json()) + "\n" for r in mine).encode())
