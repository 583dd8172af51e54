"""The `vnetlab` command. Its first act is to make a Ctrl-C that arrives while Python is still
importing end quietly with 130 (nothing is built yet), instead of with an import traceback;
from the command's first line on, Ctrl-C follows interrupts.py. Once the command has returned,
its answer stands: a Ctrl-C then is ignored, because Python's shutdown puts back the default
handler and would otherwise kill a finished command with SIGINT. A command that seems stuck
prints every thread's stack on `kill -USR1 PID` (the lab's helpers too, into workers.log)."""

import faulthandler
import gc
import os
import signal
import sys


def _before_start(signum: int, frame: object) -> None:
    sys.stderr.write("vnetlab: interrupted\n")
    os._exit(130)


signal.signal(signal.SIGINT, _before_start)
faulthandler.register(signal.SIGUSR1)


def run() -> int:
    # `up`'s netlink worker starts before anything else loads: its pyroute2 (0.1 s) then loads on
    # the other core while this process loads the rest (emulator/netlink.py)
    netlink = None
    if sys.argv[1:2] == ["up"]:
        from .netlink import NetlinkWorker

        netlink = NetlinkWorker.start()
    from . import interrupts
    from .cli import main

    interrupts.arm()
    try:
        return main(netlink=netlink)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if netlink is not None:
            netlink.close()
        # the answer is given: Python's last collections at exit walk every object the imports
        # made (60 ms of `up`'s 0.8 s) and free nothing the process's end does not
        gc.freeze()
