"""`up`'s netlink worker: a process of its own (emulator/workers/netlink.py) that loads pyroute2,
0.05 s of imports, on the other core while the command loads the rest, makes the namespaces and
boots the daemons; then it builds the links and carries out the executor's netlink actions. The
executor still decides, journals and snapshots each action: only the netlink requests cross.
The command's own process never loads pyroute2.

A request names a namespace and ops.Namespace methods to call there, in order, with their
arguments; the answer is their results, or the exception one raised, which is raised here again.
The worker opens a socket in the namespace for the request, or keeps one for a RemoteNamespace's
lifetime (the executor's lane of netlink actions). Its stdin is its end of a socket pair, and it
exits when the command's end closes: when the command is done with it, or ends, however it ends.
"""

from __future__ import annotations

import pickle
import socket
import struct
import subprocess
import threading
from itertools import count
from typing import TYPE_CHECKING

from netns.spawn import OUTLIVES_COMMAND

from .workers import CWD, command

if TYPE_CHECKING:  # the CLI imports this module first, to start the worker at once: it stays light
    from typing import Any

Call = tuple[str, tuple]
_LENGTH = struct.Struct("!I")


class NetlinkWorker:
    def __init__(self, proc: subprocess.Popen, sock: socket.socket):
        self._proc = proc
        self._sock = sock
        self._lock = threading.Lock()  # the executor's lanes are threads; one request at a time
        self._sessions = count()

    @classmethod
    def start(cls) -> "NetlinkWorker":
        """Its own process group, as the lab's other helpers: a Ctrl-C at the terminal reaches the
        command, which undoes what it built (the worker is not needed for that), not the worker."""
        mine, theirs = socket.socketpair()
        try:
            proc = subprocess.Popen(command("netlink"), stdin=theirs, cwd=CWD, **OUTLIVES_COMMAND)
        finally:
            theirs.close()
        return cls(proc, mine)

    def run(self, ns: str, calls: list[Call], session: int | None = None, last: bool = True) -> list[Any]:
        """The results of ops.Namespace(ns)'s methods `calls`, called in order in the worker, on
        the session's socket (a socket for these calls alone without one); `last` closes it."""
        if self._sock.fileno() == -1:
            raise RuntimeError("a netlink request after the worker was told there would be none (finish)")
        with self._lock:
            try:
                send(self._sock, (next(self._sessions) if session is None else session, ns, calls, last))
                ok, answer = receive(self._sock)
            except (EOFError, OSError):
                from .problems import EnvironmentProblem

                raise EnvironmentProblem(f"the netlink worker (pid {self._proc.pid}) ended unexpectedly, exit "
                                         f"code {self._proc.wait()}: its own message is above") from None
        if not ok:
            raise answer
        return answer

    def namespace(self, ns: str) -> "RemoteNamespace":
        return RemoteNamespace(self, ns, next(self._sessions))

    def finish(self) -> None:
        """No more requests: the worker reads the end of its socket and exits meanwhile."""
        self._sock.close()

    def close(self) -> None:
        """finish(), and reap the worker; one that does not exit is killed (by pid)."""
        self.finish()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def __enter__(self) -> "NetlinkWorker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RemoteNamespace:
    """An ops.Namespace in the worker, used as one (a context manager with its methods): each
    method called is one request, on one socket in the namespace, closed by the context's end."""

    def __init__(self, worker: NetlinkWorker, name: str, session: int):
        self._worker = worker
        self._session = session
        self._opened = False  # by the first method called (a lane of nftables work opens none)
        self.name = name

    def __enter__(self) -> "RemoteNamespace":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._opened:
            self._worker.run(self.name, [], self._session)

    def __getattr__(self, method: str):
        if method.startswith("_"):
            raise AttributeError(method)

        def call(*args: object) -> Any:
            self._opened = True
            return self._worker.run(self.name, [(method, args)], self._session, last=False)[0]

        return call


def send(sock: socket.socket, message: object) -> None:
    data = pickle.dumps(message)
    sock.sendall(_LENGTH.pack(len(data)) + data)


def receive(sock: socket.socket) -> Any:
    """The next message; EOFError when the other end has closed the socket."""
    (length,) = _LENGTH.unpack(_exactly(sock, _LENGTH.size))
    return pickle.loads(_exactly(sock, length))


def _exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("the netlink worker's socket closed")
        data += chunk
    return data
