"""`up`'s netlink worker (emulator/netlink.py): stdin is its socket to the command. A request
(session, namespace, calls, last) calls ops.Namespace methods, in order, on the session's socket
in that namespace, which its first request opens and its last closes. The answer is the calls'
results, or the exception one raised. Ends when the command closes its socket."""

from __future__ import annotations

import pickle
import socket
import sys

from emulator.netlink import receive, send
from netns import ops
from netns.spawn import signals_unblocked


def main() -> None:
    signals_unblocked()
    try:
        sock = socket.socket(fileno=0)
    except OSError:
        sys.exit("the netlink worker is started by `vnetlab up`, with a socket as its stdin (emulator/netlink.py)")
    sessions: dict[int, ops.Namespace] = {}
    while True:
        try:
            session, ns, calls, last = receive(sock)
        except EOFError:
            return
        try:
            n = sessions.pop(session, None) or ops.Namespace(ns, hold_signals=False)
            try:
                answer = (True, [_method(n, name)(*args) for name, args in calls])
            finally:
                if last:
                    n.close()
                else:
                    sessions[session] = n
        except Exception as exc:  # noqa: BLE001 - it is the command's to handle: sent back and raised there
            answer = (False, exc)
        try:
            send(sock, answer)
        except (pickle.PicklingError, TypeError, AttributeError):
            send(sock, (False, RuntimeError(repr(answer[1]))))


def _method(n: ops.Namespace, name: str):
    if name.startswith("_") or not callable(getattr(type(n), name, None)):
        raise AttributeError(f"ops.Namespace has no method {name}")
    return getattr(n, name)
