"""`python -m emulator.workers NAME ARGS…`: start the helper emulator/workers/NAME.py with ARGS
as its own argv. Every helper starts here, so that its imports (scapy's, most of all) are made
with the garbage collector off (emulator.importing)."""

import importlib
import sys

from emulator import importing
from emulator.workers import NAMES

if len(sys.argv) < 2 or sys.argv[1] not in NAMES:
    sys.exit(f"usage: python -m emulator.workers {{{','.join(NAMES)}}} ARGS…")
name = sys.argv.pop(1)
with importing():
    worker = importlib.import_module(f"emulator.workers.{name}")
worker.main()
