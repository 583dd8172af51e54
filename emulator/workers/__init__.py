"""The lab's helper programs, each its own process: the key recorder and the event monitor that
`up` starts, and its netlink worker (emulator/netlink.py); the backbone capture and probe engine
that verify runs (talking JSON over stdin/stdout). Each starts through `command()`
(emulator/workers/__main__.py).

scapy reads interfaces and routes once, at import, from the namespace it starts in. The backbone
capture is started inside the backbone namespace (`ip netns exec NS python -m …`). The probe engine
starts in the host namespace, never sends from it, and opens its sockets inside each lab namespace
(setns): it gives scapy only packets to build and dissect, never an interface or a route to look up.
"""

import sys

# Each runs from here, so the installed package is what runs, never an `emulator` folder that
# happens to be in the caller's working directory.
CWD = "/"
NAMES = ("capture", "keylog", "monitor", "netlink", "prober")
# Started by `up` before the build, to be ready when it ends; until its work begins it must not
# take the CPU the build needs, so it starts at the lowest priority (netns.spawn), and gets the
# command's back with `up`'s "go" (lab._await_worker). The key recorder need not: its start is
# light, and starting it so made no difference to `up`.
IN_BACKGROUND = ("monitor",)


def command(name: str, *args: str) -> list[str]:
    """The argv that starts helper `name` with `args` (python -m emulator.workers NAME ARGS…)."""
    return [sys.executable, "-m", "emulator.workers", name, *args]
