"""`python -m emulator` is the `vnetlab` command, with the same Ctrl-C policy."""
from .entry import run

raise SystemExit(run())
