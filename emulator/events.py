"""The lab's event log (events.jsonl): Azure's connection events, one JSON line each. Light on
purpose: the supervisor writes events from its listener threads before it has loaded the rest."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

EVENTS = "events.jsonl"


def record_event(lab_dir: Path, event: dict) -> None:
    append_timestamped(lab_dir / EVENTS, event)


def append_timestamped(path: Path, record: dict) -> None:
    """Append one timestamped JSON line to a lab log (one write: concurrent writers never interleave)."""
    line = json.dumps({"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), **record}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
