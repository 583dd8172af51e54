"""Ctrl-C and SIGTERM, one policy for the whole command.

A Ctrl-C is a KeyboardInterrupt that the command handles, and it is also remembered. Python
drops an exception raised inside a weakref or import-lock callback, printing "Exception ignored
in ..." (a lazy import is enough to be in one): such an interrupt is remembered instead of
printed, and `up` looks at the memory between its steps and before it reports success, so a
swallowed Ctrl-C still ends in a complete teardown, never in a lab built although the user asked
to stop. A process forked from the command (pyroute2 forks some helpers) just ends."""

from __future__ import annotations

import os
import signal
import sys
from contextlib import contextmanager
from typing import Iterator

_MAIN_PID = os.getpid()
_seen = False
_ignoring = False


def _raise(signum: int, frame: object) -> None:
    global _seen
    if os.getpid() != _MAIN_PID:
        os._exit(0)
    _seen = True
    raise KeyboardInterrupt


def _unraisable(info: sys.UnraisableHookArgs) -> None:
    if not isinstance(info.exc_value, KeyboardInterrupt):  # that one is remembered in _seen
        sys.__unraisablehook__(info)


def arm() -> None:
    """From the command's first line on."""
    signal.signal(signal.SIGINT, _raise)
    sys.unraisablehook = _unraisable


def in_main() -> bool:
    return os.getpid() == _MAIN_PID


def check() -> None:
    """Raise the interrupt that arrived, even one Python swallowed."""
    if _seen:
        raise KeyboardInterrupt


@contextmanager
def sigterm_too() -> Iterator[None]:
    """While building or tearing down, SIGTERM (what `timeout` sends) counts as a Ctrl-C."""
    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        if not _ignoring:
            signal.signal(signal.SIGTERM, previous)


def ignore() -> None:
    """From a teardown on, further signals are ignored until the command exits: a second Ctrl-C
    must not cut the teardown short and leave half a lab."""
    global _ignoring
    _ignoring = True
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
