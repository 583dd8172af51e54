"""Named network namespaces as iproute2 keeps them (`ip netns add`): the namespace's nsfs file
bind-mounted on /run/netns/NAME. Made, entered and removed with four libc calls (unshare, mount,
setns, umount2), the ones pyroute2's netns module makes, without loading pyroute2: that import is
0.05 s of every command, and `up`'s first steps and `down` need nothing else of it (its netlink
work runs in a worker that loads it meanwhile: emulator/netlink.py).
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TypeVar

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SHARED = 1 << 20
MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


@contextmanager
def signals_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the block is done: a namespace half made, a thread not yet
    back in its own namespace, a process started but not yet journalled. Held, the signal arrives
    right after, at a point where the journal is true."""
    held = {signal.SIGINT, signal.SIGTERM}
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread receives them
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def create(name: str) -> None:
    """A new namespace, made by this thread: unshare, bind-mount it to /run/netns/NAME, back home.
    A thread's network namespace is its own, so no process is forked for it (pyroute2's
    netns.create forks the whole Python process: 7-10 ms a namespace)."""
    _share_run_dir()
    path = NETNS_DIR / name
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))  # the mount point; an existing one is an error
    try:
        with _back_home():
            _check(_libc.unshare(CLONE_NEWNET), f"cannot create network namespace {name}")
            _check(_libc.mount(b"/proc/thread-self/ns/net", bytes(path), b"none", MS_BIND, None),
                   f"cannot bind network namespace {name} to {path}")
    except BaseException:
        path.unlink()
        raise


def remove(name: str) -> None:
    """Delete a namespace; its links go with it (once no process runs in it). No error if it is
    already gone."""
    path = NETNS_DIR / name
    if exists(name):
        _libc.umount2(bytes(path), MNT_DETACH)
        path.unlink()


def inside(ns: str, make: Callable[[], T]) -> T:
    """Run make() with this thread in namespace ns: the sockets it opens belong there for good."""
    with _back_home():
        _enter(str(NETNS_DIR / ns))  # a namespace that is gone is an error, never made anew
        return make()


def set_sysctls(name: str, settings: dict[str, str]) -> None:
    """Write /proc/sys keys as seen from inside namespace `name` (net.* keys are per namespace)."""
    def write() -> None:
        for key, value in settings.items():
            Path("/proc/sys", key.replace(".", "/")).write_text(value)

    inside(name, write)


def _share_run_dir() -> None:
    """/run/netns as iproute2 sets it up: a shared mount (bound onto itself first where it is no
    mount point), so that a namespace bound in it shows in every mount namespace, and stays."""
    NETNS_DIR.mkdir(parents=True, exist_ok=True)
    run_dir = bytes(NETNS_DIR)
    if _libc.mount(b"", run_dir, b"none", MS_SHARED | MS_REC, None) == 0:
        return
    _check(_libc.mount(run_dir, run_dir, b"none", MS_BIND | MS_REC, None), f"cannot bind-mount {NETNS_DIR}")
    _check(_libc.mount(b"", run_dir, b"none", MS_SHARED | MS_REC, None), f"cannot make {NETNS_DIR} a shared mount")


def _enter(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        _check(_libc.setns(fd, CLONE_NEWNET), f"cannot enter network namespace {path}")
    finally:
        os.close(fd)


@contextmanager
def _back_home() -> Iterator[None]:
    """This thread returns to its own network namespace after the block, whatever the block did.
    Signals wait meanwhile: a Ctrl-C before the way back would leave the thread in a lab namespace."""
    with signals_held():
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            yield
        finally:
            try:
                _check(_libc.setns(home, CLONE_NEWNET), "cannot return to this thread's network namespace")
            finally:
                os.close(home)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


__all__ = ["NETNS_DIR", "create", "exists", "inside", "remove", "set_sysctls", "signals_held"]
