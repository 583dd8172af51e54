"""`python -m emulator.workers NAME ARGS…`: start the helper emulator/workers/NAME.py with ARGS
as its own argv. Every helper starts here, so that its imports (scapy's, most of all) are made
with the garbage collector off (emulator.importing); one IN_BACKGROUND starts at the lowest
priority, and main() gets the priority to take back once its work begins."""

import importlib
import sys

from emulator import importing
from emulator.workers import IN_BACKGROUND, NAMES
from netns.spawn import lowest_priority

if len(sys.argv) < 2 or sys.argv[1] not in NAMES:
    sys.exit(f"usage: python -m emulator.workers {{{','.join(NAMES)}}} ARGS…")
name = sys.argv.pop(1)
priority = lowest_priority() if name in IN_BACKGROUND else None
with importing():
    worker = importlib.import_module(f"emulator.workers.{name}")
if priority is None:
    worker.main()
else:
    worker.main(priority)
