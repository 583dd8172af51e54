"""How the lab starts a process that is to outlive the command, or not. Light on purpose (no
pyroute2): the supervisor imports it before it says it is ready."""

from __future__ import annotations

import ctypes
import os
import resource
import select
import signal
import time

PR_SET_PDEATHSIG = 1

# Popen arguments for a lab process that outlives the command (a daemon, a worker, a capture): a
# process group of its own, so that a Ctrl-C at the terminal does not reach it, but the command's
# session, not a new one (start_new_session). Linux's scheduler autogroups (on in Debian's and
# Ubuntu's kernels) give every session its own share of the CPU: each gateway daemon in a
# session of its own got one share against the traffic it carries, and the tunnel ran at 0.6 of
# the same daemons started in one session (make bench, 2 cores).
OUTLIVES_COMMAND = {"process_group": 0}


def signals_unblocked() -> None:
    """A lab helper's first act. `up` spawns its helpers with Ctrl-C and SIGTERM held (each must be
    journalled before an interrupt can end `up`), and without a preexec_fn, which would make Python
    fork the whole command (3-7 ms) instead of vfork (0.3 ms): so the helper unblocks them itself.
    One that arrived meanwhile is delivered now. (A helper that kept them held would make `down`
    wait for its SIGKILL.)"""
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


LOWEST_PRIORITY = 19  # nice


def lowest_priority() -> int:
    """This thread, and the threads it starts, at the lowest CPU priority: it runs on what the
    others leave. For a helper's start, which `up` overlaps with its build on a machine of two
    cores (the build's process and the netlink worker's). Returns the priority it had, which
    normal_priority gives back (the helpers run as root, who may raise it)."""
    was = os.getpriority(os.PRIO_PROCESS, 0)
    os.setpriority(os.PRIO_PROCESS, 0, LOWEST_PRIORITY)  # Linux: of this thread alone
    return was


def normal_priority(was: int) -> None:
    os.setpriority(os.PRIO_PROCESS, 0, was)


def end_with_parent() -> None:
    """As a Popen preexec_fn: the child gets SIGTERM when its parent dies (`ip netns exec` execs
    the command, and the setting survives exec), so a helper never outlives a killed command."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def open_files_to_hard_limit() -> None:
    """A helper that holds a file per gateway or host (the monitor's vici sessions, the prober's
    sockets) needs more than the soft limit most sessions get (1,024) in a lab of 1,000 VNets."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def wait_for_word(fd: int, word: bytes, seconds: float) -> tuple[bool, str]:
    """Read a starting process's pipe until a whole line with `word` has come: (whether it did,
    what it said). The whole line: tcpdump writes its "listening on …" line in several writes, and
    a pipe closed after the first part killed it with SIGPIPE at the next. Every wait for another
    process has an end: at `seconds`, or when the pipe closes (it exited). Raw reads, not a text
    stream's readline, whose buffer can hold the line while poll() waits (poll, not select: a
    process with over 1,024 open files, as at 1,000 gateways, gets descriptors select() refuses)."""
    deadline = time.monotonic() + seconds
    said = b""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while not _has_line(said, word):
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(left * 1000):
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        said += chunk
    return _has_line(said, word), said.decode(errors="replace")


def _has_line(said: bytes, word: bytes) -> bool:
    return word in said and b"\n" in said[said.index(word):]
