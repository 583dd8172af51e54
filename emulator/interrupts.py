"""Ctrl-C and SIGTERM, one policy for the whole command.

While a lab changes (the build of `up`, and every run of the executor), an interrupt is only
noted, and the change stops at its next safe point: between two actions. An exception raised at
an arbitrary bytecode breaks whatever invariant was half-way there: CI once saw a Ctrl-C land in
threading's Condition.wait, between the release and the re-acquire of its lock, and `up` ended
in "RuntimeError: release unlocked lock" and a traceback; a daemon started but not yet journalled
is the same class. Elsewhere (reading, probing, capturing) a Ctrl-C is a KeyboardInterrupt at
once, and one that Python drops in a weakref or import-lock callback ("Exception ignored in
...") is remembered instead of printed. A process forked from the command (pyroute2 forks some
helpers) just ends."""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

_MAIN_PID = os.getpid()
_count = 0  # interrupts seen by this command
_armed = False
_deferring = 0
_ignoring = False
_told = False


def _note(signum: int, frame: object) -> None:
    global _count, _told
    if os.getpid() != _MAIN_PID:
        os._exit(0)
    _count += 1
    if not _deferring:
        raise KeyboardInterrupt
    if not _told:  # one unbuffered write: a print here could re-enter a print it interrupted
        _told = True
        try:
            os.write(2, b"vnetlab: interrupted: stopping after the step in progress\n")
        except OSError:
            pass  # stderr closed: nothing may be raised from here


def _unraisable(info: sys.UnraisableHookArgs) -> None:
    if not isinstance(info.exc_value, KeyboardInterrupt):  # that one is counted in _count
        sys.__unraisablehook__(info)


def arm() -> None:
    """From the command's first line on."""
    global _armed
    _armed = True
    signal.signal(signal.SIGINT, _note)
    sys.unraisablehook = _unraisable


def in_main() -> bool:
    return os.getpid() == _MAIN_PID


def raised_while_interrupted(exc: BaseException) -> bool:
    """Whether an exception was raised while a KeyboardInterrupt unwound (a library's cleanup that
    failed because it was cut short): the interrupt is what the user should hear about."""
    seen = exc.__context__
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__context__
    return False


def interrupted() -> bool:
    """Whether the user asked this command to stop (an error after that is a consequence of it)."""
    return _count > 0


@contextmanager
def deferred() -> Iterator[Callable[[], None]]:
    """A span in which Ctrl-C and SIGTERM are noted, not raised. Yields the span's check, to call
    at each safe point: it raises KeyboardInterrupt if an interrupt arrived since the span began
    (so a cleanup that runs after an earlier Ctrl-C, such as putting a lifted cap back, still
    completes), and the outermost span raises it on leaving if no check did. Outside the command's main thread, or in a process that never armed (the
    supervisor), it changes nothing: there SIGTERM keeps its default, ending the process."""
    start = _count

    def check() -> None:
        if _count != start:
            raise KeyboardInterrupt

    if not _armed or not in_main() or threading.current_thread() is not threading.main_thread():
        yield check
        return
    global _deferring
    previous = signal.signal(signal.SIGTERM, _note)
    _deferring += 1
    try:
        yield check
    finally:
        _deferring -= 1
        if not _ignoring:
            signal.signal(signal.SIGTERM, previous)
    if not _deferring:
        check()  # one that came after the span's last safe point is not lost: it is raised on leaving


@contextmanager
def sigterm_too() -> Iterator[None]:
    """While a capture or a followed trace runs, SIGTERM (what `timeout` sends) counts as a Ctrl-C."""
    previous = signal.signal(signal.SIGTERM, _note)
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
