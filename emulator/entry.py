"""The `vnetlab` command. Its first act is to make a Ctrl-C that arrives while Python is still
importing end quietly with 130 (nothing is built yet), instead of with an import traceback;
from the command's first line on, Ctrl-C is a KeyboardInterrupt that the command handles."""

import os
import signal
import sys


def _before_start(signum: int, frame: object) -> None:
    sys.stderr.write("vnetlab: interrupted\n")
    os._exit(130)


signal.signal(signal.SIGINT, _before_start)


def run() -> int:
    from .cli import main

    signal.signal(signal.SIGINT, signal.default_int_handler)
    return main()
